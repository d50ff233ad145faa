import numpy as np
import pytest
from conftest import NDPI, SVS, TEST_ENCODER, tissue_on_glass

from hespotex.config import TissueConfig, parse_config
from hespotex.errors import NotBrightfieldError
from hespotex.io.slide import open_slide
from hespotex.paths import SlidePaths
from hespotex.stages.tissue import TissueRecord, read_mask, run_tissue, tissue_mask


def test_mask_area_of_a_known_tissue_block(he_tile):
    image = tissue_on_glass(he_tile, (600, 500), (100, 100, 400, 300))
    mask = tissue_mask(image, 8.0, TissueConfig())
    true_area = 300 * 200
    assert abs(int(mask.sum()) - true_area) / true_area < 0.05
    assert not mask[:90].any() and not mask[:, 420:].any()


def test_blank_glass_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(240 + rng.normal(0, 3, (300, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, 8.0, TissueConfig()).any()
    assert not tissue_mask(np.full((50, 50, 3), 255, np.uint8), 8.0, TissueConfig()).any()


def test_run_tissue_writes_mask_thumbnail_overlay_and_record(tmp_path):
    config = parse_config({"encoder": TEST_ENCODER, "results": str(tmp_path)})
    with open_slide(SVS, "svs") as slide:
        record = run_tissue(slide, "svs", config)
    paths = SlidePaths(tmp_path, "svs")
    for path in (paths.tissue_mask, paths.thumbnail, paths.tissue_qc, paths.tissue_record):
        assert path.is_file()
    assert not list(tmp_path.rglob("*.tmp"))
    mask = read_mask(paths.tissue_mask)
    assert mask.shape == (185, 138)
    assert record == TissueRecord.read(paths.tissue_record)
    assert record.mpp == pytest.approx(0.499)
    assert record.mask_mpp == pytest.approx(8.0, rel=0.02)
    assert record.tissue_area_mm2 == pytest.approx(mask.sum() * record.mask_mpp**2 / 1e6)
    assert 0.3 < record.tissue_area_mm2 < 1.2


def test_fluorescence_slide_is_refused_naming_file_and_cause(tmp_path):
    config = parse_config({"encoder": TEST_ENCODER, "results": str(tmp_path)})
    with open_slide(NDPI, "dapi") as slide, pytest.raises(NotBrightfieldError) as error:
        run_tissue(slide, "dapi", config)
    assert str(NDPI) in str(error.value)
    assert "fluorescence" in str(error.value)
    assert not SlidePaths(tmp_path, "dapi").tissue_record.exists()
