"""Patch reading near the decode limit: one region read for many neighbouring spots.

Spots 100 µm apart with 112 µm patches overlap and share the slide's JPEG tiles; reading each
patch on its own decodes those tiles again and again. Here consecutive spots are grouped into
runs whose patches fit one region of at most ``max_region_px`` level pixels a side; each run's
region is read once (every tile in it decoded once) and the patches are cropped from it. The
tiles stage orders spots block by block, so runs are long. Runs are read by a pool of threads
(OpenSlide and the JPEG codecs release the GIL) at most ``workers + 1`` runs ahead, so memory
stays bounded whatever the slide's size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from hespotex.slide import ReadPlan, Slide, field_origins, level0_location, resample_field


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


def read_run(slide: Slide, run: Run, origins: np.ndarray, plan: ReadPlan) -> np.ndarray:
    """The run's patches, (k, output_px, output_px, 3) uint8, from one region read."""
    downsample = slide.backend.level_downsamples[plan.level]
    region = slide.backend.read_region(
        level0_location((run.left, run.top), downsample), plan.level, (run.width, run.height)
    )
    patches = np.empty((run.stop - run.start, plan.output_px, plan.output_px, 3), dtype=np.uint8)
    for index, (x, y) in enumerate(origins[run.start : run.stop] - (run.left, run.top)):
        patches[index] = resample_field(region[y : y + plan.level_px, x : x + plan.level_px], plan)
    return patches


def iter_patch_batches(
    slide: Slide,
    centres_px: np.ndarray,
    plan: ReadPlan,
    batch_size: int,
    workers: int,
    max_region_px: int = 2048,
) -> Iterator[np.ndarray]:
    """(B, H, W, 3) uint8 batches in spot order."""
    downsample = slide.backend.level_downsamples[plan.level]
    origins = field_origins(np.asarray(centres_px, dtype=np.float64), plan, downsample)
    runs = plan_runs(origins, plan.level_px, max_region_px)
    buffer: list[np.ndarray] = []
    buffered = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for run in runs:
            pending.append(pool.submit(read_run, slide, run, origins, plan))
            while len(pending) > max(1, workers) or (pending and pending[0].done()):
                patches = pending.popleft().result()
                buffer.append(patches)
                buffered += len(patches)
                while buffered >= batch_size:
                    block = np.concatenate(buffer)
                    yield block[:batch_size]
                    rest = block[batch_size:]
                    buffer, buffered = ([rest] if len(rest) else []), len(rest)
        while pending:
            buffer.append(pending.popleft().result())
        block = np.concatenate(buffer) if buffer else np.empty((0,), dtype=np.uint8)
        for start in range(0, len(block), batch_size):
            yield block[start : start + batch_size]
