"""Paired training sections: an H&E image, spot counts and spot pixel coordinates.

The plain layout, as HER2ST and cSCC are distributed: a counts TSV (spots × genes, raw
counts, spot ids in the first column) and a spots TSV with ``pixel_x``/``pixel_y`` in image
pixels and either a ``spot_id`` column or array coordinates ``x``/``y`` (ids ``"{x}x{y}"``).
A sections sheet (TSV: ``section_id, image, counts, spots, mpp``) lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hespotex.errors import InputDataError
from hespotex.units import is_plausible_mpp

SHEET_COLUMNS = ("section_id", "image", "counts", "spots", "mpp")


@dataclass(frozen=True)
class SectionSource:
    section_id: str
    image: Path
    counts: Path
    spots: Path
    mpp: float | None


@dataclass
class Section:
    section_id: str
    image: Path
    mpp: float | None
    counts: pd.DataFrame
    centres_px: np.ndarray


def read_sections_sheet(path: Path) -> list[SectionSource]:
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputDataError(path, f"not a readable sections sheet: {error}") from None
    missing = [column for column in SHEET_COLUMNS[:4] if column not in table.columns]
    if missing:
        raise InputDataError(path, f"the sections sheet lacks column(s) {', '.join(missing)}")
    base = path.parent
    sources = []
    for row in table.to_dict("records"):
        mpp_text = row.get("mpp", "").strip()
        mpp = float(mpp_text) if mpp_text else None
        if mpp is not None and not is_plausible_mpp(mpp):
            raise InputDataError(path, f"section {row['section_id']}: mpp {mpp} outside (0, 100]")
        sources.append(
            SectionSource(
                section_id=row["section_id"],
                image=base / row["image"],
                counts=base / row["counts"],
                spots=base / row["spots"],
                mpp=mpp,
            )
        )
    if len({source.section_id for source in sources}) != len(sources):
        raise InputDataError(path, "duplicate section_id")
    if not sources:
        raise InputDataError(path, "the sections sheet lists no sections")
    return sources


def _spot_ids(spots: pd.DataFrame, path: Path) -> pd.Index:
    if "spot_id" in spots.columns:
        return pd.Index(spots["spot_id"].astype(str))
    if {"x", "y"} <= set(spots.columns):
        return pd.Index([f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)])
    raise InputDataError(path, "the spots table needs a spot_id column or array x and y columns")


def load_section(source: SectionSource, image_size: tuple[int, int]) -> Section:
    """Read counts and spot coordinates, checking they match and lie inside the image."""
    try:
        counts = pd.read_csv(source.counts, sep="\t", index_col=0)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputDataError(source.counts, f"not a readable counts table: {error}") from None
    counts.index = counts.index.astype(str)
    if counts.shape[1] == 0:
        raise InputDataError(source.counts, "the counts table has no genes")
    if not all(np.issubdtype(dtype, np.number) for dtype in counts.dtypes):
        raise InputDataError(source.counts, "the counts table has non-numeric columns")
    try:
        spots = pd.read_csv(source.spots, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputDataError(source.spots, f"not a readable spots table: {error}") from None
    if not {"pixel_x", "pixel_y"} <= set(spots.columns):
        raise InputDataError(source.spots, "the spots table needs pixel_x and pixel_y columns")
    spots.index = _spot_ids(spots, source.spots)
    unmatched = counts.index.difference(spots.index)
    if len(unmatched):
        raise InputDataError(
            source.spots,
            f"{len(unmatched)} spot(s) of {source.counts.name} have no coordinates, "
            f"e.g. {list(unmatched[:3])}",
        )
    centres = spots.loc[counts.index, ["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    width, height = image_size
    outside = (
        (centres[:, 0] < 0)
        | (centres[:, 0] >= width)
        | (centres[:, 1] < 0)
        | (centres[:, 1] >= height)
    )
    if outside.any():
        raise InputDataError(
            source.spots,
            f"{int(outside.sum())} spot(s) lie outside the {width} × {height} px image "
            f"{source.image}",
        )
    return Section(source.section_id, source.image, source.mpp, counts, centres)


def log_normalise(counts: np.ndarray, target_sum: float = 1e6) -> np.ndarray:
    """CPM (counts per ``target_sum``) then log1p, per spot; empty spots stay zero."""
    totals = counts.sum(axis=1, keepdims=True)
    scaled = np.divide(
        counts * target_sum, totals, out=np.zeros_like(counts, dtype=np.float64), where=totals > 0
    )
    return np.log1p(scaled)
