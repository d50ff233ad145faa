"""The region reader: the same pixels as reading each patch alone, with far fewer reads."""

import math
import os

import numpy as np
import pytest
from conftest import DICOM_FOLDER, SVS
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hespotex.config import GridConfig
from hespotex.io.backends import ArraySlide
from hespotex.io.geometry import ReadPlan, field_origins, level0_location
from hespotex.io.patches import iter_patch_batches, plan_runs
from hespotex.io.slide import Slide, open_slide
from hespotex.io.windows import BACKGROUND
from hespotex.stages.tiles import block_order, lattice_um


def one_by_one(slide: Slide, centres: np.ndarray, plan) -> np.ndarray:
    return np.stack([slide.read_field(tuple(centre), plan) for centre in centres])


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(-300, 5000), st.integers(-300, 5000)), max_size=60),
    patch_px=st.integers(1, 400),
    max_region_px=st.integers(64, 3000),
)
def test_runs_cover_every_spot_once_in_order_within_the_region_limit(
    points, patch_px, max_region_px
):
    origins = np.array(points, dtype=np.int64).reshape(-1, 2)
    runs = plan_runs(origins, patch_px, max_region_px)
    assert [index for run in runs for index in range(run.start, run.stop)] == list(
        range(len(origins))
    )
    for run in runs:
        if run.stop - run.start > 1:
            assert max(run.width, run.height) <= max_region_px
        for x, y in origins[run.start : run.stop]:
            assert run.left <= x and x + patch_px <= run.left + run.width
            assert run.top <= y and y + patch_px <= run.top + run.height


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 0), (7, 1), (64, 3)])
def test_region_reads_give_exactly_the_single_reads_in_spot_order(batch_size, workers):
    pixels = np.random.default_rng(1).integers(0, 255, (900, 1100, 3), dtype=np.uint8)
    slide = Slide(ArraySlide(pixels), 0.5, "test")
    plan = slide.plan(56.0, 0.5)
    rng = np.random.default_rng(2)
    # Spots near and past every edge, in an order that is not raster order.
    centres = rng.uniform(-60, [1160, 960], size=(150, 2))
    batches = list(iter_patch_batches(slide, centres, plan, batch_size, workers, max_region_px=300))
    assert all(len(batch) == batch_size for batch in batches[:-1])
    assert np.array_equal(np.concatenate(batches), one_by_one(slide, centres, plan))


def test_a_spot_grid_on_a_real_slide_gives_openslides_pixels_decoding_each_tile_once(
    monkeypatch,
):
    """The real Aperio slide (240 px JPEG tiles) with 100 µm hexagonal spots in the tiles
    stage's order: every patch equals OpenSlide's own read of it, and each needed tile is
    read and decoded exactly once."""
    import openslide

    import hespotex.io.tiledtiff

    tile_reads = []
    real_pread = os.pread
    monkeypatch.setattr(
        hespotex.io.tiledtiff.os,
        "pread",
        lambda fd, count, offset: tile_reads.append(offset) or real_pread(fd, count, offset),
    )
    with open_slide(SVS, "svs") as slide:
        plan = slide.plan(112.0, 0.5)
        width_um, height_um = (side * slide.mpp for side in slide.dimensions)
        centres_um = lattice_um(width_um, height_um, GridConfig())
        centres = centres_um[block_order(centres_um)] / slide.mpp
        patches = np.concatenate(list(iter_patch_batches(slide, centres, plan, 16, 2)))
    origins = field_origins(centres, plan)
    reference = openslide.OpenSlide(str(SVS))
    for patch, (x, y) in zip(patches, origins, strict=True):
        rgba = reference.read_region((int(x), int(y)), 0, (plan.level_px, plan.level_px))
        on_glass = Image.new("RGB", rgba.size, (BACKGROUND,) * 3)
        on_glass.paste(rgba, mask=rgba.getchannel("A"))
        assert np.array_equal(patch, np.asarray(on_glass))
    needed = {
        (row, column)
        for x, y in origins
        for row in range(max(y, 0) // 240, (min(y + plan.level_px, 2967) - 1) // 240 + 1)
        for column in range(max(x, 0) // 240, (min(x + plan.level_px, 2220) - 1) // 240 + 1)
    }
    assert len(tile_reads) == len(set(tile_reads)) == len(needed)


def test_a_small_tile_cache_evicts_and_still_gives_the_same_pixels(small_pyramids):
    from hespotex.io.tiledtiff import TiledTiffLevels

    path = small_pyramids["tagged"]
    roomy, tight = TiledTiffLevels(path), TiledTiffLevels(path, cache_bytes=3 * 256 * 256 * 3)
    rng = np.random.default_rng(4)
    for _ in range(30):
        level = int(rng.integers(0, len(roomy.level_dimensions)))
        x, y = rng.integers(-100, 1500, size=2)
        size = rng.integers(1, 700, size=2)
        args = (level, int(x), int(y), int(size[0]), int(size[1]))
        assert np.array_equal(roomy.read(*args), tight.read(*args))
    assert len(tight._slot_of) == 3
    roomy.close()
    tight.close()


def test_reading_a_coarser_level_matches_single_reads(small_pyramids):
    """0.25 µm/px slide, 0.5 µm/px patches: read from level 1 and cropped there."""
    with open_slide(small_pyramids["tagged"], "tagged") as slide:
        plan = slide.plan(112.0, 0.5)
        assert plan.level == 1
        centres = np.array([[900.0, 800.0], [1300.0, 800.0], [1701.0, 1203.0], [2500.0, 2000.0]])
        regions = np.concatenate(list(iter_patch_batches(slide, centres, plan, 3, 2)))
        single = one_by_one(slide, centres, plan)
    assert regions.shape == (4, 224, 224, 3)
    assert np.array_equal(regions, single)


@pytest.mark.parametrize("downsample", [1.0, 2.0, 4.0002, 3.9997, 16.01])
def test_level_origins_survive_the_round_trip_through_level_0(downsample):
    plan = ReadPlan(
        level=1, downsample=downsample, level_px=56, level0_px=56 * downsample, output_px=56
    )
    centres = np.random.default_rng(3).uniform(0, 90_000, size=(500, 2))
    origins = field_origins(centres, plan)
    back = [
        [math.floor(value / downsample) for value in level0_location(origin, downsample)]
        for origin in origins
    ]
    assert np.array_equal(np.array(back), origins)
    assert np.all(np.abs((origins + 28) * downsample - centres) <= downsample)


def test_many_threads_on_a_tiny_tile_cache_still_read_the_right_pixels(small_pyramids):
    from concurrent.futures import ThreadPoolExecutor

    from hespotex.io.tiledtiff import TiledTiffLevels

    path = small_pyramids["tagged"]
    roomy, tight = TiledTiffLevels(path), TiledTiffLevels(path, cache_bytes=4 * 256 * 256 * 3)
    rng = np.random.default_rng(5)
    windows = [(0, int(x), int(y), 300, 300) for x, y in rng.integers(-100, 2800, size=(200, 2))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda window: tight.read(*window), windows))
    for window, pixels in zip(windows, threaded, strict=True):
        assert np.array_equal(pixels, roomy.read(*window))
    roomy.close()
    tight.close()


def test_formats_without_a_tile_cache_are_read_by_region_with_the_same_pixels():
    """The real DICOM series goes through OpenSlide's own regions (no tiled-TIFF shortcut)."""
    with open_slide(DICOM_FOLDER, "dicom") as slide:
        assert slide.backend.tiles is None
        plan = slide.plan(112.0, 0.5)
        width, height = slide.dimensions
        centres = np.array([[x, y] for y in range(0, height, 300) for x in range(0, width, 250)])
        batches = list(iter_patch_batches(slide, centres, plan, 10, 2, max_region_px=700))
        assert np.array_equal(np.concatenate(batches), one_by_one(slide, centres, plan))
