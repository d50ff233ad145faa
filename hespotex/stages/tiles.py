"""Stage 2, tiles: the spot grid over the tissue.

The grid is defined in microns (a hexagonal Visium-like lattice, or a square one) and converted
once to level-0 pixels. Every spot whose patch footprint (``patch_um`` square) holds tissue
is scored and decided by quality control (``hespotex.stages.spot_qc``): too little tissue,
ink, folds, blur. ``spots.tsv`` holds the spots going on to the features stage, with their
scores and ``qc`` (ok or flagged); ``spots_dropped.tsv`` the others, with their reasons;
``qc/spot_qc.json`` the counts and the slide's verdict; ``qc/quality.png`` the picture.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from hespotex.config import ArtifactAction, GridConfig, PipelineConfig
from hespotex.errors import NoTissueError
from hespotex.io.atomic import read_png, write_tsv
from hespotex.io.records import (
    SPOT_COLUMNS,
    Decision,
    SlideMaps,
    TissueRecord,
    read_maps,
)
from hespotex.io.slide import Slide
from hespotex.paths import SlidePaths
from hespotex.stages.quality_picture import draw_quality_picture
from hespotex.stages.spot_qc import blur_scores, check_slide, decide, score_footprints, summarise

logger = logging.getLogger(__name__)

# Spots are numbered block by block (blocks of this many µm, raster order inside), so that the
# features stage reads each block's patches from one region (≈2,000 px at 0.5 µm/px).
READ_BLOCK_UM = 900.0


def lattice_um(width_um: float, height_um: float, grid: GridConfig) -> np.ndarray:
    """Spot centres (x, y) in µm covering a ``width_um × height_um`` slide, row by row."""
    spacing = grid.spacing_um
    row_step = spacing * np.sqrt(3) / 2 if grid.layout == "hex" else spacing
    rows = np.arange(spacing / 2, height_um, row_step)
    columns = np.arange(spacing / 2, width_um + spacing / 2, spacing)
    xs, ys = np.meshgrid(columns, rows)
    if grid.layout == "hex":
        xs = xs + (np.arange(len(rows))[:, None] % 2) * spacing / 2
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
    inside = (centres[:, 0] < width_um) & (centres[:, 1] < height_um)
    return centres[inside]


def block_order(centres_um: np.ndarray) -> np.ndarray:
    """Indices that put spots block by block (blocks in raster order, spots in raster order
    inside each block)."""
    block = np.floor(centres_um / READ_BLOCK_UM)
    return np.lexsort((centres_um[:, 0], centres_um[:, 1], block[:, 0], block[:, 1]))


def plan_spots(
    maps: SlideMaps, record: TissueRecord, config: PipelineConfig, slide: Slide | None
) -> pd.DataFrame:
    """Every tissue spot of the lattice, numbered block by block, with its scores and QC
    decision (``spot_qc``); focus is scored when ``slide`` is given, on the spots that no
    other reason drops."""
    artifacts = config.tissue.artifacts
    min_tissue = config.grid.min_tissue_fraction
    width_um, height_um = record.width_px * record.mpp, record.height_px * record.mpp
    centres_um = lattice_um(width_um, height_um, config.grid)
    spots = score_footprints(maps, centres_um, config.features.patch_um, min_tissue)
    spots = spots.iloc[block_order(spots[["x_um", "y_um"]].to_numpy())].reset_index(drop=True)
    spots.insert(0, "spot_id", [f"spot{index:06d}" for index in range(len(spots))])
    spots.insert(1, "x_px", spots["x_um"] / record.mpp)
    spots.insert(2, "y_px", spots["y_um"] / record.mpp)
    spots["blur_score"] = np.nan
    if slide is not None and artifacts.blur.action != ArtifactAction.OFF:
        going = (decide(spots, artifacts, min_tissue)["qc"] != Decision.DROPPED).to_numpy()
        scores = blur_scores(
            slide,
            spots.loc[going, ["x_px", "y_px"]].to_numpy(),
            artifacts.blur.field_um,
            artifacts.blur.mpp,
            config.features.num_workers,
        )
        spots.loc[going, "blur_score"] = scores.round(4)
    return decide(spots, artifacts, min_tissue)[SPOT_COLUMNS]


def run_tiles(slide: Slide, slide_id: str, config: PipelineConfig) -> pd.DataFrame:
    """The spots going on to the features stage, after quality control; the dropped ones,
    the counts and the QC picture beside them."""
    paths = SlidePaths(config.results, slide_id)
    record = TissueRecord.read(paths.tissue_record)
    maps = read_maps(paths, record)
    spots = plan_spots(maps, record, config, slide)
    if spots.empty:
        raise NoTissueError(
            record.slide_path,
            f"no spot has {config.grid.min_tissue_fraction:.0%} tissue under its "
            f"{config.features.patch_um:.0f} µm patch (tissue found: "
            f"{record.tissue_area_mm2:.3f} mm²); see {paths.tissue_qc}",
        )
    artifacts = config.tissue.artifacts
    summary = summarise(spots, artifacts, config.grid.min_tissue_fraction)
    dropped = spots["qc"] == Decision.DROPPED
    write_tsv(paths.dropped_spots, spots[dropped])
    summary.write(paths.spot_qc)
    draw_quality_picture(
        paths.quality_picture,
        read_png(paths.thumbnail),
        maps,
        spots,
        summary,
        slide_id,
        config.grid.spacing_um,
    )
    logger.info(
        "%d tissue spots on a %s lattice, %.0f µm apart: %d kept (%d flagged), %d dropped; "
        "QC %s (%s)",
        summary.tissue_spots,
        config.grid.layout,
        config.grid.spacing_um,
        summary.kept,
        summary.flagged,
        summary.dropped,
        summary.verdict,
        summary.describe() or "no artefact measured",
    )
    check_slide(summary, artifacts, slide.path, paths.quality_picture)
    kept = spots[~dropped]
    write_tsv(paths.spots, kept)
    return kept
