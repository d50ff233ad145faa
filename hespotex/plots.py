"""Heatmaps of predicted expression over the slide thumbnail, spots drawn at true size."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.patches import RegularPolygon


def write_heatmap(path: Path, adata: ad.AnnData, library_id: str, gene: str) -> None:
    """The H&E thumbnail beside hexagons of the grid spacing (they tile the tissue) coloured
    by ``gene`` over a faded copy of it."""
    spatial = adata.uns["spatial"][library_id]
    image = spatial["images"]["hires"]
    scale = spatial["scalefactors"]["tissue_hires_scalef"]
    spacing = spatial["scalefactors"]["spot_diameter_fullres"] * scale
    centres = np.asarray(adata.obsm["spatial"]) * scale
    values = np.asarray(adata[:, gene].X).ravel()
    hexagons = [
        RegularPolygon((x, y), numVertices=6, radius=spacing / np.sqrt(3)) for x, y in centres
    ]
    collection = PatchCollection(hexagons, cmap="magma", alpha=0.85, linewidths=0)
    collection.set_array(values)
    height, width = image.shape[:2]
    figure, (tissue_axes, axes) = plt.subplots(
        1, 2, figsize=(14, 7 * height / max(width, 1) + 0.8), dpi=100
    )
    tissue_axes.imshow(image)
    tissue_axes.set_title(f"{library_id}: H&E")
    axes.imshow(image, alpha=0.5)
    axes.add_collection(collection)
    axes.set_title(f"predicted {gene}")
    for panel in (tissue_axes, axes):
        panel.set_xlim(0, width)
        panel.set_ylim(height, 0)
        panel.set_axis_off()
    figure.colorbar(collection, ax=axes, fraction=0.04, pad=0.02, label="log1p CPM")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
