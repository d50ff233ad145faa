import re

import numpy as np
import pytest
from conftest import (
    DICOM_FOLDER,
    NDPI,
    OME_TIFF,
    SHARED_DATA,
    SVS,
    TEST_ENCODER,
    tissue_on_glass,
)

from hespotex.config import TissueConfig, parse_config
from hespotex.errors import NotBrightfieldError, WrongStainError
from hespotex.io.pyramids import write_pyramid_tiff
from hespotex.io.records import TissueRecord, read_mask
from hespotex.io.slide import open_slide
from hespotex.paths import SlidePaths
from hespotex.stages.stain_check import StainVerdict, measure_stain
from hespotex.stages.tissue import run_tissue, tissue_mask


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


HER2ST_SECTIONS = ("B4", "C2", "C3", "C4")


def _her2st_image(section: str):
    return next((SHARED_DATA / "her2st" / section).glob("*.jpg"))


@pytest.fixture(scope="module")
def ihc_pyramid(tmp_path_factory):
    """scikit-image's real IHC image (DAB on haematoxylin), four times over on glass, as a
    pyramidal TIFF at 0.5 µm/px."""
    from skimage.data import immunohistochemistry

    path = tmp_path_factory.mktemp("ihc") / "ihc.tif"
    write_pyramid_tiff(
        path, tissue_on_glass(immunohistochemistry(), (1400, 1400), (150, 150, 1174, 1174)), 0.5
    )
    return path


def _stain_config(tmp_path, check: str = "error"):
    return parse_config(
        {"encoder": TEST_ENCODER, "results": str(tmp_path), "tissue": {"stain_check": check}}
    )


@pytest.mark.parametrize(
    ("slide_id", "path", "mpp"),
    [
        *((f"her2st-{section}", _her2st_image(section), 0.69) for section in HER2ST_SECTIONS),
        ("cmu1-svs", SVS, None),
        ("cmu1-dicom", DICOM_FOLDER, None),
        ("os1-ome-tiff", OME_TIFF, None),
    ],
)
def test_real_he_slides_pass_the_stain_check_with_their_numbers_recorded(
    tmp_path, slide_id, path, mpp
):
    with open_slide(path, slide_id, mpp) as slide:
        record = run_tissue(slide, slide_id, _stain_config(tmp_path))
    stain = record.stain_check
    assert stain["verdict"] == "H&E" and stain["action"] == "error"
    assert stain["dab_fraction"] <= 0.01 and stain["other_fraction"] <= 0.05
    assert stain["stained_fraction"] >= 0.9 and stain["tissue_pixels"] >= 900
    assert TissueRecord.read(SlidePaths(tmp_path, slide_id).tissue_record).stain_check == stain


def test_tiatoolbox_he_tile_as_a_pyramid_passes_the_stain_check(tmp_path, small_pyramids):
    with open_slide(small_pyramids["tagged"], "tile") as slide:
        stain = run_tissue(slide, "tile", _stain_config(tmp_path)).stain_check
    assert stain["verdict"] == "H&E" and stain["dab_fraction"] <= 0.01


def test_an_ihc_slide_is_refused_with_its_stain_numbers_naming_the_file(tmp_path, ihc_pyramid):
    with open_slide(ihc_pyramid, "ihc") as slide, pytest.raises(WrongStainError) as error:
        run_tissue(slide, "ihc", _stain_config(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{ihc_pyramid}: the tissue looks like IHC (DAB), not H&E: ")
    dab = float(re.search(r"([\d.]+)% of the stained tissue is DAB brown", message).group(1))
    assert dab > 50
    assert "mean optical density (R, G, B)" in message and "median brightness" in message
    assert "tissue.stain_check: warn" in message
    assert not SlidePaths(tmp_path, "ihc").tissue_record.exists()


def test_warn_records_the_verdict_and_goes_on_and_off_only_records(tmp_path, ihc_pyramid, caplog):
    with open_slide(ihc_pyramid, "ihc") as slide:
        warned = run_tissue(slide, "ihc", _stain_config(tmp_path / "warn", "warn")).stain_check
        assert "looks like IHC (DAB)" in caplog.text and "goes on" in caplog.text
        caplog.clear()
        off = run_tissue(slide, "ihc", _stain_config(tmp_path / "off", "off")).stain_check
        assert "looks like" not in caplog.text
    assert warned["verdict"] == off["verdict"] == "IHC (DAB)"
    assert (warned["action"], off["action"]) == ("warn", "off")
    assert warned["dab_fraction"] == off["dab_fraction"] > 0.5
    assert SlidePaths(tmp_path / "warn", "ihc").tissue_mask.is_file()


def test_fluorescence_is_dark_and_a_blue_green_dye_is_other(he_tile):
    with open_slide(NDPI, "dapi") as slide:
        overview, _ = slide.read_overview(8.0)
    dark = measure_stain(overview, np.ones(overview.shape[:2], dtype=bool))
    assert dark.verdict == StainVerdict.FLUORESCENCE and dark.median_brightness < 0.1
    # Real H&E with red and green swapped stands in for a blue-green dye (alcian blue, light
    # green): red is absorbed well beyond green.
    swapped = he_tile[..., [1, 0, 2]]
    other = measure_stain(swapped, np.ones(swapped.shape[:2], dtype=bool))
    assert other.verdict == StainVerdict.OTHER and other.other_fraction > 0.5
    assert measure_stain(he_tile, np.ones(he_tile.shape[:2], dtype=bool)).verdict == "H&E"
    # Unstained (as pale as glass) is other; a few pixels of tissue are too few to judge.
    unstained = np.full((40, 40, 3), 240, dtype=np.uint8)
    pale = measure_stain(unstained, np.ones((40, 40), dtype=bool))
    assert pale.verdict == StainVerdict.OTHER and pale.stained_fraction == 0
    speck = np.zeros((40, 40), dtype=bool)
    speck[:5, :5] = True
    assert measure_stain(he_tile[:40, :40], speck).verdict == StainVerdict.TOO_LITTLE_TISSUE
