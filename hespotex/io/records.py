"""Each slide's records between stages, in their on-disk formats: ``tissue.json`` (the tissue
record), ``tissue_mask.png`` and ``artifacts_mask.png`` (the tissue stage's maps),
``spots.tsv`` and ``spots_dropped.tsv`` (the spots and their quality control), ``qc/spot_qc.json``
(what quality control did), and the outline of the cell each spot owns in its lattice.

The stages write them and the later stages and the outputs read them, all through this module.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from hespotex.config import InkColour
from hespotex.io.atomic import read_png, write_json
from hespotex.paths import SlidePaths

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueRecord:
    """What later stages need to know about the slide; stored as ``tissue.json``."""

    slide_id: str
    slide_path: str
    reader: str
    width_px: int
    height_px: int
    mpp: float
    mpp_source: str
    mask_downsample: float
    mask_mpp: float
    tissue_area_mm2: float
    hespotex_version: str
    # The stain check's verdict and numbers (absent from records of older versions).
    stain_check: dict | None = None
    # Area of each ink colour found and of folds, mm² (absent from older records).
    ink_area_mm2: dict[str, float] | None = None
    fold_area_mm2: float | None = None

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> TissueRecord:
        return cls(**json.loads(Path(path).read_text()))


def read_mask(path: Path) -> np.ndarray:
    return read_png(path) > 127


# Codes of the ink label image (0: no ink), and the bit that marks fold.
INK_CODES = {InkColour.GREEN: 1, InkColour.BLUE: 2, InkColour.RED: 3, InkColour.BLACK: 4}
INK_BITS = 0b0111
FOLD_BIT = 0b1000


def encode_artifacts(ink: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """One uint8 image of both: the ink code in the low bits, ``FOLD_BIT`` for fold."""
    return (ink & INK_BITS) | np.where(fold, FOLD_BIT, 0).astype(np.uint8)


def decode_artifacts(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ink labels and fold mask from ``encode_artifacts``' image."""
    return image & INK_BITS, (image & FOLD_BIT) > 0


def read_artifacts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Ink labels and fold mask the tissue stage wrote."""
    return decode_artifacts(read_png(path))


@dataclass(frozen=True)
class SlideMaps:
    """The tissue stage's maps of a slide, all at ``mask_mpp`` µm per pixel."""

    tissue: np.ndarray
    ink: np.ndarray
    fold: np.ndarray
    mask_mpp: float


def read_maps(paths: SlidePaths, record: TissueRecord) -> SlideMaps:
    """The tissue stage's maps; a slide whose tissue stage predates artefact detection has
    none found."""
    tissue = read_mask(paths.tissue_mask)
    if paths.artifacts_mask.exists():
        ink, fold = read_artifacts(paths.artifacts_mask)
    else:
        logger.warning(
            "%s is missing: no ink or fold is known for this slide (run its tissue stage "
            "again to find them)",
            paths.artifacts_mask,
        )
        ink, fold = np.zeros(tissue.shape, dtype=np.uint8), np.zeros(tissue.shape, dtype=bool)
    return SlideMaps(tissue=tissue, ink=ink, fold=fold, mask_mpp=record.mask_mpp)


class Decision(StrEnum):
    OK = "ok"
    FLAGGED = "flagged"
    DROPPED = "dropped"


class Reason(StrEnum):
    """Why a spot is flagged or dropped; listed in this order in ``qc_reasons``."""

    INK = "ink"
    GLASS = "glass"
    FOLD = "fold"
    BLUR = "blur"


QC_COLUMNS = ["ink_fraction", "fold_fraction", "blur_score", "qc", "qc_reasons"]
SPOT_COLUMNS = ["spot_id", "x_px", "y_px", "x_um", "y_um", "tissue_fraction", *QC_COLUMNS]


def read_spots(path) -> pd.DataFrame:
    spots = pd.read_csv(path, sep="\t", dtype={"spot_id": str})
    if "qc_reasons" in spots.columns:
        spots["qc_reasons"] = spots["qc_reasons"].fillna("")
    return spots


def read_scored_spots(paths: SlidePaths) -> pd.DataFrame:
    """Every tissue spot quality control scored: those kept, then those dropped."""
    tables = [read_spots(paths.spots), read_spots(paths.dropped_spots)]
    return pd.concat([table for table in tables if len(table)], ignore_index=True)


@dataclass(frozen=True)
class QcSummary:
    """What quality control did to a slide's spots; stored as ``qc/spot_qc.json``."""

    tissue_spots: int
    kept: int
    flagged: int
    dropped: int
    # Spots over each artefact's threshold (whatever its action), and their share of the
    # tissue spots (of those scored, for blur).
    over_threshold: dict[str, int]
    shares: dict[str, float]
    actions: dict[str, str]
    verdict: str

    def describe(self) -> str:
        return ", ".join(
            f"{reason} {self.shares[reason]:.0%} ({self.over_threshold[reason]:,} spots)"
            for reason in self.shares
        )

    def as_record(self) -> dict:
        return asdict(self)

    def write(self, path: Path) -> None:
        write_json(path, self.as_record())

    @classmethod
    def read(cls, path: Path) -> QcSummary:
        return cls(**json.loads(Path(path).read_text()))


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
