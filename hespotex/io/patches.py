"""Patch reading near the decode limit: every slide tile decoded once, however many patches
share it.

Spots 100 µm apart with 112 µm patches overlap and share the slide's JPEG tiles; reading each
patch on its own decodes those tiles again and again. Tiled TIFFs (SVS, generic pyramids,
OME-TIFF) keep their decoded tiles in a cache (``hespotex.io.tiledtiff``) and each patch is copied
straight from it. Other formats are read by region: consecutive spots are grouped into runs
whose patches fit one region of at most ``max_region_px`` level pixels a side, read once, and
the patches are cropped from it. The tiles stage numbers spots block by block, so neighbours
are read together either way. Batches are read by a pool of threads (the JPEG codecs and
OpenSlide release the GIL) at most ``max(1, workers) + 1`` batches ahead, into fresh arrays,
so memory stays bounded whatever the slide's size. A per-pixel ``transform`` of each batch
(stain normalisation) runs in the same threads, beside the encoder rather than before it.
``hespotex.io.reading_pool`` reads (and transforms) in processes instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from hespotex.io.geometry import ReadPlan, field_origins, level0_location, resample_field
from hespotex.io.slide import Slide


@dataclass(frozen=True)
class Run:
    """Spots ``start:stop`` whose patches lie inside one region of the read level."""

    start: int
    stop: int
    left: int
    top: int
    width: int
    height: int


def plan_runs(origins: np.ndarray, patch_level_px: int, max_region_px: int) -> list[Run]:
    """Greedy runs of consecutive spots whose patches' bounding box stays within
    ``max_region_px`` (a patch larger than that is a run of its own)."""
    runs = []
    start = 0
    count = len(origins)
    while start < count:
        left, top = origins[start]
        right, bottom = left + patch_level_px, top + patch_level_px
        stop = start + 1
        while stop < count:
            x, y = origins[stop]
            new_left, new_top = min(left, x), min(top, y)
            new_right, new_bottom = max(right, x + patch_level_px), max(bottom, y + patch_level_px)
            if max(new_right - new_left, new_bottom - new_top) > max_region_px:
                break
            left, top, right, bottom = new_left, new_top, new_right, new_bottom
            stop += 1
        runs.append(Run(start, stop, int(left), int(top), int(right - left), int(bottom - top)))
        start = stop
    return runs


def read_batch(slide: Slide, origins: np.ndarray, plan: ReadPlan, max_region_px: int) -> np.ndarray:
    """The patches at ``origins`` (read-level pixels), (k, output_px, output_px, 3) uint8."""
    patches = np.empty((len(origins), plan.output_px, plan.output_px, 3), dtype=np.uint8)
    read_batch_into(patches, slide, origins, plan, max_region_px)
    return patches


def read_batch_into(
    patches: np.ndarray, slide: Slide, origins: np.ndarray, plan: ReadPlan, max_region_px: int
) -> None:
    """Fill ``patches`` (k, output_px, output_px, 3) with the patches at ``origins``."""
    tiles = slide.backend.tiles
    side = plan.level_px
    if tiles is not None:
        for index, (x, y) in enumerate(origins):
            if side == plan.output_px:
                tiles.read_into(patches[index], plan.level, x, y)
            else:
                patches[index] = resample_field(tiles.read(plan.level, x, y, side, side), plan)
        return
    for run in plan_runs(origins, side, max_region_px):
        region = slide.backend.read_region(
            level0_location((run.left, run.top), plan.downsample),
            plan.level,
            (run.width, run.height),
        )
        for index in range(run.start, run.stop):
            x, y = origins[index] - (run.left, run.top)
            patches[index] = resample_field(region[y : y + side, x : x + side], plan)


def iter_patch_batches(
    slide: Slide,
    centres_px: np.ndarray,
    plan: ReadPlan,
    batch_size: int,
    workers: int,
    max_region_px: int = 2048,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[np.ndarray]:
    """(B, H, W, 3) uint8 batches in spot order, read by ``workers`` threads, each mapped by
    ``transform`` when given."""

    def read(batch_origins: np.ndarray) -> np.ndarray:
        patches = read_batch(slide, batch_origins, plan, max_region_px)
        return patches if transform is None else transform(patches)

    origins = field_origins(centres_px, plan)
    ahead = max(1, workers)
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        pending: deque = deque()
        for start in range(0, len(origins), batch_size):
            batch_origins = origins[start : start + batch_size]
            pending.append(pool.submit(read, batch_origins))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
