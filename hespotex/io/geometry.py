"""A slide's patch geometry, in one place: which level a field is read from, how many pixels it
spans there and at the output, where each field starts on that level, and back to level 0.

Fields are planned in microns (``plan_read``) and placed on the read level by
``field_origins``, where every reader rounds, once, so a field read alone and one cropped from
a larger region are the same pixels. Pure arithmetic on a slide's level resolutions: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# An mpp may differ from the target by this factor and still count as "the same resolution":
# scanners report 0.499 or 0.2527 for nominal 0.5 and 0.25.
MPP_TOLERANCE = 1.05


@dataclass(frozen=True)
class ReadPlan:
    """How to read a square field of ``field_um`` at ``target_mpp``: which level (and its
    downsample from level 0), how many level pixels, the level-0 extent that covers, and the
    output side in pixels."""

    level: int
    downsample: float
    level_px: int
    level0_px: float
    output_px: int


def best_level(level_mpps: Sequence[float], target_mpp: float) -> int:
    """The coarsest level still at least as fine as ``target_mpp`` (read, then shrink);
    level 0 when even that is coarser than the target."""
    best = 0
    for level, mpp in enumerate(level_mpps):
        if mpp <= target_mpp * MPP_TOLERANCE:
            best = level
    return best


def plan_read(
    level_mpps: Sequence[float], downsamples: Sequence[float], field_um: float, target_mpp: float
) -> ReadPlan:
    level = best_level(level_mpps, target_mpp)
    level_px = max(1, round(field_um / level_mpps[level]))
    return ReadPlan(
        level=level,
        downsample=downsamples[level],
        level_px=level_px,
        level0_px=level_px * downsamples[level],
        output_px=max(1, round(field_um / target_mpp)),
    )


def field_origins(centres_px: np.ndarray, plan: ReadPlan) -> np.ndarray:
    """Top-left corner of the field around each level-0 centre, in read-level pixels."""
    centres = np.asarray(centres_px, dtype=np.float64)
    return np.floor((centres - plan.level0_px / 2) / plan.downsample).astype(np.int64)


def level0_location(level_xy, downsample: float) -> tuple[int, int]:
    """The level-0 point that readers map back to exactly ``level_xy`` on the level (rounded
    up, so that dividing by a non-integer downsample does not land one pixel short)."""
    return (math.ceil(level_xy[0] * downsample), math.ceil(level_xy[1] * downsample))


def resample_field(field: np.ndarray, plan: ReadPlan) -> np.ndarray:
    """A field read at ``plan.level_px`` resized to ``plan.output_px`` (bilinear)."""
    if plan.level_px == plan.output_px:
        return field
    resized = Image.fromarray(field).resize(
        (plan.output_px, plan.output_px), Image.Resampling.BILINEAR, reducing_gap=2.0
    )
    return np.asarray(resized)
