"""Heatmaps of predicted expression over the slide thumbnail, spots drawn at true size:
``heatmaps/{gene}.png`` for each gene of ``outputs.genes``."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np

from hespotex.io.atomic import atomic_path
from hespotex.io.figures import plt, save_figure
from hespotex.io.records import spot_outline

FLAGGED_EDGE = "#00e5ff"


def gene_trust(var, gene: str) -> str:
    """The gene's scores from the checkpoint (``var``), for a figure title: how far the map
    can be trusted is read beside it: the served model's held-out score, or (maps decoded
    before serving) the checkpoint's scores."""
    if "served_pearson" in var.columns:
        score = var.at[gene, "served_pearson"]
        return f" ({var.at[gene, 'served_model']}, r = {score:.2f})" if np.isfinite(score) else ""
    scores = [
        f"{name.replace('_pearson', '')} r = {var.at[gene, name]:.2f}"
        for name in ("cv_pearson", "validation_pearson")
        if name in var.columns and np.isfinite(var.at[gene, name])
    ]
    return f" ({', '.join(scores)})" if scores else ""


def flagged_spots(obs) -> np.ndarray:
    """The spots quality control flagged (none in maps made before it existed)."""
    if "qc" not in obs.columns:
        return np.zeros(len(obs), dtype=bool)
    return (obs["qc"] == "flagged").to_numpy()


def write_heatmap(path: Path, adata: ad.AnnData, library_id: str, gene: str, layout: str) -> None:
    """The H&E thumbnail beside the spots coloured by ``gene`` over a faded copy of it, each
    spot drawn as the cell it owns in the grid (hexagon or square), so they tile the tissue;
    the spots quality control flagged are outlined."""
    spatial = adata.uns["spatial"][library_id]
    image = spatial["images"]["hires"]
    scale = spatial["scalefactors"]["tissue_hires_scalef"]
    spacing = spatial["scalefactors"]["spot_diameter_fullres"] * scale
    centres = np.asarray(adata.obsm["spatial"]) * scale
    values = np.asarray(adata[:, gene].X).ravel()
    cells = centres[:, None, :] + spot_outline(layout, spacing)[None, :, :]
    from matplotlib.collections import PolyCollection

    collection = PolyCollection(cells, cmap="magma", alpha=0.85, linewidths=0)
    collection.set_array(values)
    flagged = flagged_spots(adata.obs)
    height, width = image.shape[:2]
    figure, (tissue_axes, axes) = plt.subplots(
        1, 2, figsize=(14, 7 * height / max(width, 1) + 0.8), dpi=100
    )
    tissue_axes.imshow(image)
    tissue_axes.set_title(f"{library_id}: H&E")
    axes.imshow(image, alpha=0.5)
    axes.add_collection(collection)
    title = f"predicted {gene}{gene_trust(adata.var, gene)}"
    if flagged.any():
        # Outlined over the colours, so a flagged spot's value still shows.
        axes.add_collection(
            PolyCollection(
                cells[flagged], facecolors="none", edgecolors=FLAGGED_EDGE, linewidths=0.8
            )
        )
        title += f"\n{int(flagged.sum()):,} spots flagged by QC outlined"
    axes.set_title(title)
    for panel in (tissue_axes, axes):
        panel.set_xlim(0, width)
        panel.set_ylim(height, 0)
        panel.set_axis_off()
    figure.colorbar(collection, ax=axes, fraction=0.04, pad=0.02, label="log1p CPM")
    save_figure(figure, path, dpi=100)


def write_heatmaps(
    folder: Path, adata: ad.AnnData, library_id: str, genes: list[str], layout: str
) -> None:
    """``folder/{gene}.png`` for each of ``genes``; the folder appears whole or not at all."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for gene in genes:
            write_heatmap(tmp / f"{gene}.png", adata, library_id, gene, layout)
