import numpy as np
import pytest
from conftest import TEST_ENCODER
from scipy.spatial import cKDTree

from hespotex.config import GridConfig, parse_config
from hespotex.io.records import SlideMaps, TissueRecord
from hespotex.stages.spot_qc import footprint_fraction
from hespotex.stages.tiles import lattice_um, plan_spots


def test_hex_lattice_neighbours_are_one_spacing_apart():
    grid = GridConfig(spacing_um=100.0)
    centres = lattice_um(2000.0, 1500.0, grid)
    distances, _ = cKDTree(centres).query(centres, k=7)
    interior = (
        (centres[:, 0] > 200)
        & (centres[:, 0] < 1800)
        & (centres[:, 1] > 200)
        & (centres[:, 1] < 1300)
    )
    assert np.allclose(distances[interior, 1:], 100.0)
    rows = np.unique(centres[:, 1].round(6))
    assert np.allclose(np.diff(rows), 100.0 * np.sqrt(3) / 2)
    assert centres[:, 0].max() < 2000 and centres[:, 1].max() < 1500
    assert centres.min() >= 0


def test_square_lattice_has_four_neighbours_at_spacing():
    centres = lattice_um(1000.0, 1000.0, GridConfig(layout="square", spacing_um=50.0))
    assert len(centres) == 400
    distances, _ = cKDTree(centres).query(centres, k=5)
    assert np.allclose(distances[210, 1:], 50.0)


def test_tissue_fraction_matches_brute_force():
    rng = np.random.default_rng(1)
    mask = rng.random((60, 80)) > 0.6
    mask_mpp = 5.0
    centres = rng.uniform(0, 400, size=(50, 2))
    fraction = footprint_fraction(mask, mask_mpp, centres, 50.0)
    for (x, y), value in zip(centres, fraction, strict=True):
        x0, x1 = int(np.clip(round(x / 5 - 5), 0, 80)), int(np.clip(round(x / 5 + 5), 0, 80))
        y0, y1 = int(np.clip(round(y / 5 - 5), 0, 60)), int(np.clip(round(y / 5 + 5), 0, 60))
        assert value == pytest.approx(mask[y0:y1, x0:x1].sum() / 100)


def test_spots_keep_tissue_and_convert_microns_to_level0_pixels():
    mask = np.zeros((100, 100), dtype=bool)
    mask[20:60, 30:90] = True
    record = TissueRecord(
        slide_id="s",
        slide_path="s.svs",
        reader="array",
        width_px=4000,
        height_px=4000,
        mpp=0.25,
        mpp_source="test",
        mask_downsample=40.0,
        mask_mpp=10.0,
        tissue_area_mm2=0.24,
        hespotex_version="test",
    )
    config = parse_config({"encoder": TEST_ENCODER})
    no_ink = np.zeros(mask.shape, dtype=np.uint8)
    maps = SlideMaps(tissue=mask, ink=no_ink, fold=no_ink > 0, mask_mpp=10.0)
    spots = plan_spots(maps, record, config, slide=None)
    assert len(spots) > 0
    assert np.allclose(spots.x_px, spots.x_um / 0.25)
    assert np.allclose(spots.y_px, spots.y_um / 0.25)
    assert (spots.tissue_fraction >= 0.5).all()
    assert spots.x_um.between(300 - 56, 900 + 56).all()
    assert spots.y_um.between(200 - 56, 600 + 56).all()
    assert spots.spot_id.is_unique
