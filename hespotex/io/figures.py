"""Figures written as PNG: laid out, written atomically, and freed even when writing fails.

matplotlib runs headless (Agg) on cluster nodes; every plot of the package goes through here.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hespotex.io.atomic import atomic_path


def save_figure(figure, path: Path, dpi: int) -> None:
    """Lay out, write atomically as PNG, and free the figure even when writing fails."""
    try:
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(figure)
