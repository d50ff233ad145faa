"""The region reader: the same pixels as reading each patch alone, with far fewer reads."""

import math

import numpy as np
import pytest
from conftest import SVS
from hypothesis import given, settings
from hypothesis import strategies as st

from hespotex.config import GridConfig
from hespotex.patches import iter_patch_batches, plan_runs
from hespotex.slide import (
    ArraySlide,
    ReadPlan,
    Slide,
    field_origins,
    level0_location,
    open_slide,
)
from hespotex.tiling import block_order, lattice_um


def one_by_one(slide: Slide, centres: np.ndarray, plan) -> np.ndarray:
    return np.stack([slide.read_field(tuple(centre), plan) for centre in centres])


class TileCountingBackend:
    """Wraps a level-0 backend and counts the slide tiles its reads touch, i.e. decode."""

    def __init__(self, backend, tile_px: int):
        self.backend = backend
        self.tile_px = tile_px
        self.tiles_decoded = 0
        self.distinct_tiles: set[tuple[int, int]] = set()

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def read_region(self, location, level, size):
        columns = range(
            location[0] // self.tile_px, (location[0] + size[0] - 1) // self.tile_px + 1
        )
        rows = range(location[1] // self.tile_px, (location[1] + size[1] - 1) // self.tile_px + 1)
        self.tiles_decoded += len(columns) * len(rows)
        self.distinct_tiles.update((column, row) for column in columns for row in rows)
        return self.backend.read_region(location, level, size)


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


def test_a_spot_grid_decodes_each_slide_tile_about_once_on_a_real_slide():
    """The real Aperio slide (240 px JPEG tiles) with 100 µm hexagonal spots in the tiles
    stage's order: the same patches as reading one by one, with each tile decoded about once
    instead of once per patch touching it."""
    with open_slide(SVS, "svs") as slide:
        counting = TileCountingBackend(slide.backend, 240)
        slide.backend = counting
        plan = slide.plan(112.0, 0.5)
        width_um, height_um = (side * slide.mpp for side in slide.dimensions)
        centres_um = lattice_um(width_um, height_um, GridConfig())
        centres = centres_um[block_order(centres_um)] / slide.mpp
        batches = list(iter_patch_batches(slide, centres, plan, 16, 2))
        region_tiles = counting.tiles_decoded
        distinct_tiles = len(counting.distinct_tiles)
        counting.tiles_decoded = 0
        expected = one_by_one(slide, centres, plan)
    single_tiles = counting.tiles_decoded
    assert np.array_equal(np.concatenate(batches), expected)
    assert region_tiles <= 1.5 * distinct_tiles
    assert single_tiles >= 2.5 * region_tiles


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
    plan = ReadPlan(level=1, level_px=56, level0_px=56 * downsample, output_px=56)
    centres = np.random.default_rng(3).uniform(0, 90_000, size=(500, 2))
    origins = field_origins(centres, plan, downsample)
    back = [
        [math.floor(value / downsample) for value in level0_location(origin, downsample)]
        for origin in origins
    ]
    assert np.array_equal(np.array(back), origins)
    assert np.all(np.abs((origins + 28) * downsample - centres) <= downsample)
