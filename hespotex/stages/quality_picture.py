"""The QC picture of a slide: its thumbnail with the tissue outline, each artefact in its own
colour, the dropped and flagged spots, a legend with counts and the slide's verdict — one
image per slide, so a person can review a cohort's QC by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from hespotex.config import InkColour
from hespotex.io.figures import plt, save_figure
from hespotex.io.records import INK_CODES, Decision, QcSummary, Reason, SlideMaps

LONG_SIDE_IN = 9.0
DPI = 100
TISSUE_COLOUR = "#00e676"
FOLD_COLOUR = "#ff00ff"
INK_COLOURS = {
    InkColour.GREEN: "#1b5e20",
    InkColour.BLUE: "#0d47a1",
    InkColour.RED: "#b71c1c",
    InkColour.BLACK: "#000000",
}
# Marker edge colour of flagged spots by their first reason; dropped spots are crosses.
FLAG_COLOURS = {
    Reason.INK: "#00b0ff",
    Reason.FOLD: FOLD_COLOUR,
    Reason.BLUR: "#ff9100",
}
DROPPED_COLOUR = "#ff1744"


def fill_region(axes, region: np.ndarray, colour: str) -> None:
    layer = np.zeros((*region.shape, 4))
    layer[region] = (*to_rgb(colour), 0.45)
    axes.imshow(layer, interpolation="nearest")
    axes.contour(region, levels=[0.5], colors=[colour], linewidths=0.8)


def draw_quality_picture(
    path: Path,
    thumbnail: np.ndarray,
    maps: SlideMaps,
    spots: pd.DataFrame,
    summary: QcSummary,
    title: str,
    spot_spacing_um: float,
) -> None:
    """Write the QC picture of ``spots`` (every scored spot, kept and dropped) over
    ``thumbnail`` (``maps.mask_mpp`` µm per pixel)."""
    height, width = thumbnail.shape[:2]
    scale = LONG_SIDE_IN / max(height, width)
    figure, axes = plt.subplots(figsize=(max(3.0, width * scale), max(3.0, height * scale) + 1))
    axes.imshow(thumbnail, interpolation="lanczos")
    handles = []
    if maps.tissue.any():
        axes.contour(maps.tissue, levels=[0.5], colors=[TISSUE_COLOUR], linewidths=1.0)
    handles.append(Line2D([], [], color=TISSUE_COLOUR, label="tissue outline"))
    for colour, code in INK_CODES.items():
        region = maps.ink == code
        if region.any():
            fill_region(axes, region, INK_COLOURS[colour])
            handles.append(Patch(color=INK_COLOURS[colour], alpha=0.6, label=f"{colour.value} ink"))
    if maps.fold.any():
        fill_region(axes, maps.fold, FOLD_COLOUR)
        handles.append(Patch(color=FOLD_COLOUR, alpha=0.6, label="fold"))
    marker_points = spot_spacing_um / maps.mask_mpp * scale * 72 * 0.5
    x = spots["x_um"].to_numpy() / maps.mask_mpp
    y = spots["y_um"].to_numpy() / maps.mask_mpp
    dropped = (spots["qc"] == Decision.DROPPED).to_numpy()
    if dropped.any():
        axes.scatter(
            x[dropped], y[dropped], s=marker_points**2, marker="x", c=DROPPED_COLOUR, linewidths=0.6
        )
        handles.append(
            Line2D(
                [],
                [],
                color=DROPPED_COLOUR,
                marker="x",
                linestyle="",
                label=f"dropped spots ({int(dropped.sum()):,})",
            )
        )
    flagged = (spots["qc"] == Decision.FLAGGED).to_numpy()
    first_reason = spots["qc_reasons"].str.split(",").str[0].to_numpy()
    for reason, colour in FLAG_COLOURS.items():
        these = flagged & (first_reason == reason.value)
        if these.any():
            axes.scatter(
                x[these],
                y[these],
                s=marker_points**2,
                marker="o",
                facecolors="none",
                edgecolors=colour,
                linewidths=0.8,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    color=colour,
                    marker="o",
                    markerfacecolor="none",
                    linestyle="",
                    label=f"flagged for {reason.value} ({int(these.sum()):,})",
                )
            )
    axes.set_title(
        f"{title}: {summary.kept:,} of {summary.tissue_spots:,} tissue spots kept; "
        f"QC {summary.verdict}\n{summary.describe() or 'no artefact measured'}",
        fontsize=9,
    )
    axes.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.01),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    axes.set_axis_off()
    save_figure(figure, path, dpi=DPI)
