"""Top patches per gene: the patches a gene's prediction is highest and lowest on.

What the paper uses to interpret a gene's map: one PNG per configured gene, the top row the
``count`` spots of highest predicted expression, the bottom row the ``count`` lowest, each
patch as the encoder saw it (``features.patch_um`` at ``features.patch_mpp``, stain normalised
as its features were) with its value. A spot shown for several genes is read once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from hespotex.config import FeaturesConfig
from hespotex.encoder.stain import StainTransform
from hespotex.io.atomic import atomic_path
from hespotex.io.figures import plt, save_figure
from hespotex.io.slide import Slide

PATCH_INCHES = 1.6


def extreme_spots(values: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``count`` highest values (highest first) and the ``count`` lowest
    (lowest first); with fewer than 2 × count spots the rows share spots."""
    order = np.argsort(values, kind="stable")
    count = min(count, len(values))
    return order[::-1][:count], order[:count]


def write_top_patch_montages(
    folder: Path,
    slide: Slide,
    centres_px: np.ndarray,
    predictions: dict[str, np.ndarray],
    count: int,
    features: FeaturesConfig,
    stain: StainTransform | None = None,
) -> None:
    """``folder/{gene}.png`` for each gene of ``predictions`` (none when ``count`` is 0),
    patches mapped by ``stain`` as the features stage mapped them; the folder appears whole
    or not at all."""
    plan = slide.plan(features.patch_um, features.patch_mpp)
    patches: dict[int, np.ndarray] = {}

    def patch(index: int) -> np.ndarray:
        if index not in patches:
            x, y = centres_px[index]
            field = slide.read_field((float(x), float(y)), plan)
            patches[index] = field if stain is None else stain(field[None])[0]
        return patches[index]

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for gene, values in predictions.items() if count else ():
            figure = montage(gene, values, patch, count, features.patch_um)
            save_figure(figure, tmp / f"{gene}.png", dpi=100)


def montage(
    gene: str, values: np.ndarray, patch: Callable[[int], np.ndarray], count: int, patch_um: float
):
    """The figure: the ``count`` highest-valued spots' patches above the ``count`` lowest."""
    highest, lowest = extreme_spots(values, count)
    columns = len(highest)
    figure, axes = plt.subplots(
        2,
        columns,
        figsize=(PATCH_INCHES * columns, PATCH_INCHES * 2 + 0.9),
        squeeze=False,
    )
    for row, (label, indices) in enumerate((("highest", highest), ("lowest", lowest))):
        for column, index in enumerate(indices):
            panel = axes[row, column]
            panel.imshow(patch(int(index)))
            panel.set_title(f"{values[index]:.2f}", fontsize=8)
            panel.set_xticks([])
            panel.set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=10)
    figure.suptitle(
        f"{gene}: patches of highest (top) and lowest (bottom) predicted expression, "
        f"log1p CPM; {patch_um:.0f} µm each",
        fontsize=9,
    )
    return figure
