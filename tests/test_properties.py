"""Property-based tests of the arithmetic every slide goes through."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from hespotex.config import GridConfig
from hespotex.io.backends import ArraySlide
from hespotex.io.slide import Slide
from hespotex.network.spot_graph import knn_edges
from hespotex.stages.tiles import lattice_um


@settings(max_examples=60, deadline=None)
@given(
    spacing=st.floats(10, 500),
    width=st.floats(1, 20000),
    height=st.floats(1, 20000),
    layout=st.sampled_from(["hex", "square"]),
)
def test_lattice_stays_inside_and_keeps_its_spacing(spacing, width, height, layout):
    centres = lattice_um(width, height, GridConfig(spacing_um=spacing, layout=layout))
    assert ((centres >= 0) & (centres < [width, height])).all()
    if len(centres) > 1:
        distances, _ = cKDTree(centres).query(centres, k=2)
        assert distances[:, 1].min() >= spacing * (1 - 1e-9), "spots never closer than spacing"
        if min(width, height) >= 2 * spacing:
            assert np.isclose(distances[:, 1].min(), spacing, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(mpp=st.floats(0.1, 10), spacing=st.floats(20, 300))
def test_spacing_in_pixels_follows_any_mpp(mpp, spacing):
    centres_um = lattice_um(3000, 3000, GridConfig(spacing_um=spacing))
    centres_px = centres_um / mpp
    distances, _ = cKDTree(centres_px).query(centres_px, k=2)
    assert np.allclose(distances[:, 1].min() * mpp, spacing, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=60, unique=True
    ),
    k=st.integers(1, 10),
    self_loops=st.booleans(),
)
def test_knn_graph_is_symmetric_with_k_neighbours_and_optional_self_loops(points, k, self_loops):
    coords = np.asarray(points, dtype=float)
    edges = knn_edges(coords, k, self_loops=self_loops)
    pairs = set(map(tuple, edges.T.tolist()))
    assert len(pairs) == edges.shape[1], "no duplicate edges"
    assert all((b, a) in pairs for a, b in pairs)
    loops = {(i, i) for i in range(len(coords))}
    assert (loops <= pairs) if self_loops else not (loops & pairs)
    degree = np.bincount(edges[0][edges[0] != edges[1]], minlength=len(coords))
    assert (degree >= min(k, len(coords) - 1)).all()


@settings(max_examples=80, deadline=None)
@given(
    width=st.integers(5, 300),
    height=st.integers(5, 300),
    x=st.floats(-100, 400),
    y=st.floats(-100, 400),
    field_um=st.floats(2, 200),
    target_mpp=st.floats(0.25, 4),
)
def test_fields_have_the_asked_size_anywhere_even_past_the_edge(
    width, height, x, y, field_um, target_mpp
):
    pixels = np.arange(width * height * 3, dtype=np.uint32).reshape(height, width, 3) % 251
    slide = Slide(ArraySlide(pixels.astype(np.uint8)), 1.0, "test")
    plan = slide.plan(field_um, target_mpp)
    field = slide.read_field((x, y), plan)
    assert field.shape == (plan.output_px, plan.output_px, 3)
    assert plan.output_px == max(1, round(field_um / target_mpp))
    assert abs(plan.level0_px - field_um) <= 0.5 + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    x0=st.integers(-50, 150),
    y0=st.integers(-50, 150),
    size=st.integers(1, 80),
)
def test_window_copies_the_overlap_exactly_and_pads_white(x0, y0, size):
    pixels = np.random.default_rng(0).integers(0, 250, (100, 120, 3), dtype=np.uint8)
    window = ArraySlide(pixels).read_region((x0, y0), 0, (size, size))
    for row in range(size):
        for column in (0, size - 1):
            sy, sx = y0 + row, x0 + column
            inside = 0 <= sy < 100 and 0 <= sx < 120
            expected = pixels[sy, sx] if inside else np.full(3, 255)
            assert (window[row, column] == expected).all()
