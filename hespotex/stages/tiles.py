"""Stage 2, tiles: the spot grid over the tissue.

The grid is defined in microns (a hexagonal Visium-like lattice, or a square one) and converted
once to level-0 pixels. A spot is kept when its patch footprint (``patch_px × patch_mpp`` µm
square) is mostly tissue; the share is read from the mask's integral image, so the cost does
not depend on the patch size.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from hespotex.config import GridConfig, PipelineConfig
from hespotex.errors import NoTissueError
from hespotex.io.atomic import write_tsv
from hespotex.paths import SlidePaths
from hespotex.stages.tissue import TissueRecord, read_mask
from hespotex.units import Microns

logger = logging.getLogger(__name__)

# Spots are numbered block by block (blocks of this many µm, raster order inside), so that the
# features stage reads each block's patches from one region (≈2,000 px at 0.5 µm/px).
READ_BLOCK_UM = 900.0
SPOT_COLUMNS = ["spot_id", "x_px", "y_px", "x_um", "y_um", "tissue_fraction"]


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


def spot_outline(layout: str, spacing_px: float) -> np.ndarray:
    """Corners, relative to the spot centre, of the cell a spot owns in its lattice."""
    if layout == "hex":
        # Pointy-top hexagons with circumradius spacing / √3 tile a lattice whose rows are
        # spacing apart along x and spacing·√3/2 apart along y.
        radius = spacing_px / math.sqrt(3)
        angles = np.deg2rad(np.arange(6) * 60 + 90)
        return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    half = spacing_px / 2
    return np.array([[-half, -half], [half, -half], [half, half], [-half, half]])


def footprint_tissue_fraction(
    mask: np.ndarray, mask_mpp: float, centres_um: np.ndarray, footprint_um: Microns
) -> np.ndarray:
    """Share of tissue pixels inside the square footprint around each centre; the parts of
    a footprint that fall off the mask count as background."""
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    half_px = footprint_um / 2 / mask_mpp
    centre_px = centres_um / mask_mpp
    x0 = np.clip(np.rint(centre_px[:, 0] - half_px), 0, width).astype(np.int64)
    x1 = np.clip(np.rint(centre_px[:, 0] + half_px), 0, width).astype(np.int64)
    y0 = np.clip(np.rint(centre_px[:, 1] - half_px), 0, height).astype(np.int64)
    y1 = np.clip(np.rint(centre_px[:, 1] + half_px), 0, height).astype(np.int64)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    full_area = max(1.0, (2 * half_px) ** 2)
    return np.clip(inside / full_area, 0.0, 1.0)


def block_order(centres_um: np.ndarray) -> np.ndarray:
    """Indices that put spots block by block (blocks in raster order, spots in raster order
    inside each block)."""
    block = np.floor(centres_um / READ_BLOCK_UM)
    return np.lexsort((centres_um[:, 0], centres_um[:, 1], block[:, 0], block[:, 1]))


def plan_spots(mask: np.ndarray, record: TissueRecord, config: PipelineConfig) -> pd.DataFrame:
    width_um = record.width_px * record.mpp
    height_um = record.height_px * record.mpp
    centres_um = lattice_um(width_um, height_um, config.grid)
    fraction = footprint_tissue_fraction(
        mask, record.mask_mpp, centres_um, config.features.patch_um
    )
    keep = fraction >= config.grid.min_tissue_fraction
    centres_um, fraction = centres_um[keep], fraction[keep]
    order = block_order(centres_um)
    centres_um, fraction = centres_um[order], fraction[order]
    return pd.DataFrame(
        {
            "spot_id": [f"spot{index:06d}" for index in range(len(centres_um))],
            "x_px": centres_um[:, 0] / record.mpp,
            "y_px": centres_um[:, 1] / record.mpp,
            "x_um": centres_um[:, 0],
            "y_um": centres_um[:, 1],
            "tissue_fraction": fraction.round(4),
        },
        columns=SPOT_COLUMNS,
    )


def run_tiles(slide_id: str, config: PipelineConfig) -> pd.DataFrame:
    paths = SlidePaths(config.results, slide_id)
    record = TissueRecord.read(paths.tissue_record)
    mask = read_mask(paths.tissue_mask)
    spots = plan_spots(mask, record, config)
    if spots.empty:
        raise NoTissueError(
            record.slide_path,
            f"no spot has {config.grid.min_tissue_fraction:.0%} tissue under its "
            f"{config.features.patch_um:.0f} µm patch (tissue found: "
            f"{record.tissue_area_mm2:.3f} mm²); see {paths.tissue_qc}",
        )
    logger.info(
        "%d spots on a %s lattice, %.0f µm apart",
        len(spots),
        config.grid.layout,
        config.grid.spacing_um,
    )
    write_tsv(paths.spots, spots)
    return spots


def read_spots(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"spot_id": str})
