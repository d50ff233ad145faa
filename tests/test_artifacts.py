"""Quality control of artefacts: marker ink, folds and blur, per spot and per slide.

Measured against artefacts planted on real H&E (HER2ST sections,
``hespotex.demo.planted_artifacts``; the planted masks are the truth) and against the real
thumbnails with marker ink of ``../shared/data/artifacts`` (no truth there: checked for what a
person sees, ink not tissue and the tissue kept). ``benchmarks/artifacts_qc.py`` measures the
same over every section and seed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, inked, tissue_on_glass
from PIL import Image
from scipy import ndimage

from hespotex.config import InkColour, PipelineConfig, TissueConfig, parse_config
from hespotex.demo.builder import her2st_image, read_image, resample
from hespotex.demo.planted_artifacts import PlantedSlide, at_size, planted_slide
from hespotex.errors import NoTissueError, SlideQualityError, WrongStainError
from hespotex.io.backends import ArraySlide
from hespotex.io.records import (
    INK_CODES,
    SPOT_COLUMNS,
    TissueRecord,
    decode_artifacts,
    encode_artifacts,
    read_artifacts,
    read_mask,
    read_scored_spots,
    read_spots,
)
from hespotex.io.slide import Slide
from hespotex.paths import SlidePaths
from hespotex.stages.artifacts import INK_BOUNDS, INK_SMOOTHING_UM, Chromaticity, blur_effect
from hespotex.stages.spot_qc import footprint_fraction
from hespotex.stages.tiles import run_tiles
from hespotex.stages.tissue import detect_tissue, run_tissue, tissue_mask

STAIN_STATS = {"architecture": "stain-stats"}
HER2ST_MPP = 0.69
# Ink and folds are found on the tissue stage's 8 µm/px overview: sections resampled to 2 µm/px
# plant and run four times faster than at 1 µm/px and give the same overview. Their patches
# are then read at 2 µm/px (112 µm, as the default's 224 px at 0.5 µm/px: features.
# max_upsampling refuses 0.5 µm/px patches from a 2 µm/px slide).
COARSE_MPP = 2.0
COARSE_FEATURES = {"patch_px": 56, "patch_mpp": COARSE_MPP}
# A spot's patch over this share planted artefact is on it (as benchmarks/artifacts_qc.py).
TRUTH_SHARE = 0.25


def _her2st(section: str, mpp: float) -> np.ndarray:
    return resample(read_image(her2st_image(SHARED_DATA, section)), HER2ST_MPP, mpp)


def _config(results: Path, **sections) -> PipelineConfig:
    return parse_config({"encoder": STAIN_STATS, "results": str(results), **sections})


def _planted_share(spots: pd.DataFrame, mask: np.ndarray, mpp: float, side_um: float):
    """Share of each spot's ``side_um`` square inside a full-size planted mask."""
    return footprint_fraction(mask, mpp, spots[["x_um", "y_um"]].to_numpy(), side_um)


@dataclass(frozen=True)
class PlantedRun:
    """A section with artefacts planted, through the tissue and tiles stages."""

    clean: np.ndarray
    planted: PlantedSlide
    config: PipelineConfig
    record: TissueRecord
    paths: SlidePaths
    kept: pd.DataFrame

    @property
    def spots(self) -> pd.DataFrame:
        return read_scored_spots(self.paths)


def _run_planted(
    results: Path,
    name: str,
    clean: np.ndarray,
    mpp: float,
    seed: int,
    kinds: tuple[str, ...],
    sections: dict,
    **options,
) -> PlantedRun:
    planted = planted_slide(clean, mpp, seed, kinds=kinds, **options)
    config = _config(results, **sections)
    slide = Slide(ArraySlide(planted.image, f"{name}.tif"), mpp, "planted")
    record = run_tissue(slide, name, config)
    kept = run_tiles(slide, name, config)
    return PlantedRun(clean, planted, config, record, SlidePaths(results, name), kept)


# ---------------------------------------------------------------------------------------------
# 1. Planted marker ink on a real section


INK_COLOURS = ("green", "blue", "black")


@pytest.fixture(scope="module")
def ink_run(tmp_path_factory) -> PlantedRun:
    """HER2ST B4 at 2 µm/px with a green ring around the tissue, a blue stroke across it and a
    black dot on it (seed 0), through the tissue and tiles stages with the default config
    (blur off: it is measured at 1 µm/px, finer than this slide)."""
    return _run_planted(
        tmp_path_factory.mktemp("ink"),
        "b4-ink",
        _her2st("B4", COARSE_MPP),
        COARSE_MPP,
        0,
        ("ink",),
        {"features": COARSE_FEATURES, "tissue": {"artifacts": {"blur": {"action": "off"}}}},
        ink_colours=INK_COLOURS,
    )


def test_planted_ink_is_found_and_the_tissue_beside_it_kept(ink_run):
    record, paths, planted = ink_run.record, ink_run.paths, ink_run.planted
    ink, fold = read_artifacts(paths.artifacts_mask)
    tissue = read_mask(paths.tissue_mask)
    assert ink.shape == fold.shape == tissue.shape
    truth = at_size(planted.ink_mask(), ink.shape)
    found = ink > 0
    # Measured: IoU 0.916 (B4, seed 0; 0.88-0.93 over the four sections and two seeds).
    iou = (truth & found).sum() / (truth | found).sum()
    assert iou >= 0.85, iou
    # Each stroke is found as its own colour (measured: ≥ 99 % of each stroke's pixels).
    for stroke, colour in zip(("ring", "stroke", "dot"), INK_COLOURS, strict=True):
        stroke_truth = at_size(planted.ink[stroke], ink.shape)
        labelled = ink[stroke_truth]
        assert (labelled == INK_CODES[InkColour(colour)]).mean() >= 0.95, (stroke, colour)
    # Tissue outside the planted ink is kept: recall against the clean section's mask
    # (measured 0.979; 0.966-0.998 over four sections and two seeds).
    clean_overview = np.asarray(
        Image.fromarray(ink_run.clean).resize(ink.shape[::-1], Image.Resampling.BOX)
    )
    clean = tissue_mask(clean_overview, record.mask_mpp, ink_run.config.tissue) & ~truth
    recall = (clean & tissue).sum() / clean.sum()
    assert recall >= 0.9, recall
    # tissue.json records each colour's area, close to the planted one (measured: 8-14 % over
    # it, the ink's faded edge).
    stored = TissueRecord.read(paths.tissue_record)
    assert stored == record
    assert set(record.ink_area_mm2) == set(INK_COLOURS)
    pixel_mm2 = record.mask_mpp**2 / 1e6
    for colour, area in record.ink_area_mm2.items():
        assert area == pytest.approx((ink == INK_CODES[InkColour(colour)]).sum() * pixel_mm2, 1e-3)
    planted_mm2 = {
        colour: planted.ink[stroke].sum() * planted.mpp**2 / 1e6
        for stroke, colour in zip(("ring", "stroke", "dot"), INK_COLOURS, strict=True)
    }
    for colour in INK_COLOURS:
        assert record.ink_area_mm2[colour] == pytest.approx(planted_mm2[colour], rel=0.3), colour
    assert record.fold_area_mm2 == pytest.approx(fold.sum() * pixel_mm2, abs=1e-3)


def test_planted_ink_passes_the_stain_check_and_its_spots_are_dropped(ink_run):
    record, paths, kept = ink_run.record, ink_run.paths, ink_run.kept
    # The stain check judged the tissue without the ink: H&E, so run_tissue went on.
    assert record.stain_check["verdict"] == "H&E" and record.stain_check["action"] == "error"
    # Kept spots: spots.tsv, as run_tiles returned them, with every QC column.
    stored = read_spots(paths.spots)
    assert list(stored.columns) == SPOT_COLUMNS
    assert stored["spot_id"].tolist() == kept["spot_id"].tolist()
    assert set(stored["qc"]) <= {"ok", "flagged"}
    assert not stored["qc_reasons"].str.contains("ink").any()
    assert (stored["ink_fraction"] <= ink_run.config.tissue.artifacts.ink.max_fraction).all()
    planted_mpp = ink_run.planted.mpp
    patch_um = ink_run.config.features.patch_um
    on_ink = _planted_share(stored, ink_run.planted.ink_mask(), planted_mpp, patch_um)
    # Measured: 0 of 900 kept spots (at most 0.4 % over four sections and two seeds).
    assert (on_ink > TRUTH_SHARE).mean() <= 0.02
    # Dropped spots: spots_dropped.tsv, with their reasons; those dropped for ink lie on it.
    dropped = read_spots(paths.dropped_spots)
    assert list(dropped.columns) == SPOT_COLUMNS
    assert (dropped["qc"] == "dropped").all()
    assert set(dropped["spot_id"]).isdisjoint(stored["spot_id"])
    for_ink = dropped[dropped["qc_reasons"].str.split(",").map(lambda reasons: "ink" in reasons)]
    # Measured: 127 dropped, all for ink (5 also as glass), 99.2 % of them touching planted ink.
    assert len(for_ink) >= 50
    assert (for_ink["ink_fraction"] > ink_run.config.tissue.artifacts.ink.max_fraction).all()
    touching = _planted_share(for_ink, ink_run.planted.ink_mask(), planted_mpp, patch_um) > 0
    assert touching.mean() >= 0.95
    # The counts and the slide's verdict.
    summary = json.loads(paths.spot_qc.read_text())
    assert summary["kept"] == len(stored) and summary["dropped"] == len(dropped)
    assert summary["tissue_spots"] == len(stored) + len(dropped)
    assert summary["over_threshold"]["ink"] == len(for_ink)
    assert summary["verdict"] == "pass"
    assert summary["actions"]["ink"] == "drop"
    assert paths.quality_picture.is_file()
    with Image.open(paths.quality_picture) as picture:
        assert min(picture.size) > 100


def test_artifacts_mask_round_trips_ink_codes_and_fold():
    rng = np.random.default_rng(0)
    ink = rng.integers(0, 5, (40, 30)).astype(np.uint8)
    fold = rng.random((40, 30)) > 0.7
    encoded = encode_artifacts(ink, fold)
    assert encoded.dtype == np.uint8
    got_ink, got_fold = decode_artifacts(encoded)
    assert np.array_equal(got_ink, ink) and np.array_equal(got_fold, fold)


# ---------------------------------------------------------------------------------------------
# 2. Real thumbnails with marker ink

# The thumbnails' resolution is not recorded (≈ 15-30 µm/px for a whole slide at this size).
THUMBNAIL_MPP = 16.0
# MSKCC thumbnails with strong marker ink, and the colours drawn on them: blue strokes over
# tissue (00006), green, blue and black over and beside tissue (00035), blue rings on glass
# around scattered tissue (00036), black strokes (00060) and a black box crossing a strip of
# tissue (00272).
STRONG_INK = {
    "mskcc-pen-00006.jpg": ("blue",),
    "mskcc-pen-00035.jpg": ("green", "blue", "black"),
    "mskcc-pen-00036.jpg": ("blue",),
    "mskcc-pen-00060.jpg": ("black",),
    "mskcc-pen-00272.jpg": ("black",),
}


def _strongly_inked(rgb: np.ndarray, config: TissueConfig) -> np.ndarray:
    """Pixels of marker-sized pieces (``ink.min_area_um2``) within some colour's strict (seed)
    bounds: ink beyond doubt. Smaller pieces are specks of debris, ignored by design."""
    colour = Chromaticity.of(rgb, max(1, round(INK_SMOOTHING_UM / THUMBNAIL_MPP)))
    min_pixels = config.artifacts.ink.min_area_um2 / THUMBNAIL_MPP**2
    strong = np.zeros(rgb.shape[:2], dtype=bool)
    for ink in config.artifacts.ink.colours:
        seeds = np.logical_or.reduce([bounds.holds(colour) for bounds in INK_BOUNDS[ink].seeds])
        pieces, _ = ndimage.label(seeds)
        marker_sized = np.bincount(pieces.ravel()) >= min_pixels
        marker_sized[0] = False
        strong |= marker_sized[pieces]
    return strong


@pytest.mark.parametrize(("name", "colours"), STRONG_INK.items())
def test_real_marker_ink_is_labelled_ink_and_the_tissue_is_kept(name, colours):
    with Image.open(SHARED_DATA / "artifacts" / name) as image:
        rgb = np.asarray(image.convert("RGB"))
    config = TissueConfig()
    detection = detect_tissue(rgb, THUMBNAIL_MPP, config)
    ink, tissue = detection.ink, detection.tissue
    assert ink.shape == tissue.shape == detection.fold.shape == rgb.shape[:2]
    # The colours drawn are found (measured: from 5,677 px of black on 00035 to 103,919 px of
    # black on 00272; 2,000 px is 0.5 mm²).
    for colour in colours:
        assert (ink == INK_CODES[InkColour(colour)]).sum() >= 2000, colour
    # No pixel of strong ink is left as ink-free tissue. Tissue under a stroke drawn over a
    # section stays tissue by design (it is there, under the ink), but then it is labelled ink,
    # so that the spots over it are dropped. Measured: 0 on all eleven MSKCC thumbnails, at
    # 12, 16 and 24 µm/px (the leftovers of strong colour are specks under min_area_um2).
    strong = _strongly_inked(rgb, config)
    assert strong.sum() >= 5000
    assert not (strong & tissue & (ink == 0)).any()
    assert not (strong & (ink == 0)).any()
    # The tissue is kept: recall of clearly H&E-coloured pixels (stained, ΣOD > 0.5, and within
    # the H&E band, averaged as the ink is) outside the ink. Measured: 0.994 (00006), 0.818
    # (00035, whose pale eosin-only stroma Otsu's threshold leaves out), 0.912 (00036),
    # 0.952 (00060), 0.870 (00272).
    colour = Chromaticity.of(rgb, max(1, round(INK_SMOOTHING_UM / THUMBNAIL_MPP)))
    haematoxylin_and_eosin = (
        (colour.density > 0.5)
        & (np.abs(colour.across) < 0.06)
        & (colour.along > -0.2)
        & (colour.along < 0.3)
        & (ink == 0)
    )
    recall = (haematoxylin_and_eosin & tissue).sum() / haematoxylin_and_eosin.sum()
    assert recall >= 0.75, recall


# ---------------------------------------------------------------------------------------------
# 3. IHC is refused, ink or not


@pytest.fixture(scope="module")
def ihc_image() -> np.ndarray:
    """scikit-image's real IHC image (DAB on haematoxylin), tiled on glass, 1.2 mm square at
    0.5 µm/px."""
    from skimage.data import immunohistochemistry

    return tissue_on_glass(immunohistochemistry(), (2400, 2400), (200, 200, 2200, 2200))


@pytest.mark.parametrize("colour", ["blue", "green"])
def test_an_ihc_slide_with_marker_ink_is_still_refused(tmp_path, ihc_image, colour):
    # A 200 µm stroke down the whole slide, over glass and tissue.
    image = inked(ihc_image, (700, 100, 1100, 2300), colour)
    slide = Slide(ArraySlide(image, "ihc-inked.tif"), 0.5, "test")
    config = _config(tmp_path)
    overview, _ = slide.read_overview(config.tissue.mask_mpp)
    found = detect_tissue(overview, config.tissue.mask_mpp, config.tissue).ink
    # The ink is found (the ink-exclusion path runs): measured 3,707 px of green; blue over
    # DAB and haematoxylin is not told apart from them, only its 343 px on glass are.
    assert (found == INK_CODES[InkColour(colour)]).sum() >= 100
    with pytest.raises(WrongStainError) as error:
        run_tissue(slide, "ihc", config)
    message = str(error.value)
    assert message.startswith("ihc-inked.tif: the tissue looks like IHC (DAB), not H&E: ")
    dab = float(re.search(r"([\d.]+)% of the stained tissue is DAB brown", message).group(1))
    assert dab > 50
    assert not SlidePaths(tmp_path, "ihc").tissue_record.exists()


# ---------------------------------------------------------------------------------------------
# 4-5. Blur


def test_batched_blur_effect_is_scikit_images(he_tile):
    from skimage.color import rgb2gray
    from skimage.measure import blur_effect as skimage_blur_effect

    rng = np.random.default_rng(0)
    noise = rng.random((4, 48, 64))
    smoothed = ndimage.gaussian_filter(rng.random((4, 48, 64)), (0, 2, 2))
    tissue = rgb2gray(he_tile)[:480, :640].reshape(10, 48, 640 // 64, 64).swapaxes(1, 2)
    tissue = tissue.reshape(-1, 48, 64)[:8]
    flat = np.full((1, 48, 64), 0.5)
    images = np.concatenate([noise, smoothed, tissue, flat])
    for h_size in (11, 5):
        got = blur_effect(images, h_size)
        expected = [skimage_blur_effect(image, h_size) for image in images]
        assert got.shape == (len(images),)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    scores = blur_effect(images)
    assert scores[4:8].min() > scores[:4].max(), "smoothing raises the blur effect"
    assert scores[-1] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def blur_run(tmp_path_factory) -> PlantedRun:
    """A 3 × 3 mm region of HER2ST C3 (its densest tissue) at 1 µm/px, a disc of 1 mm radius
    blurred by a Gaussian of σ 4 µm (seed 0); default config."""
    full = read_image(her2st_image(SHARED_DATA, "C3"))
    side = round(3000 * 1.0 / HER2ST_MPP)
    crop = np.ascontiguousarray(full[1500 : 1500 + side, 2000 : 2000 + side])
    return _run_planted(
        tmp_path_factory.mktemp("blur"),
        "c3-blur",
        resample(crop, HER2ST_MPP, 1.0),
        1.0,
        0,
        ("blur",),
        {},
        blur_sigma_um=4.0,
    )


def test_a_blurred_field_is_flagged_and_sharp_tissue_is_not(blur_run):
    spots, config = blur_run.spots, blur_run.config
    blur = config.tissue.artifacts.blur
    inside = _planted_share(spots, blur_run.planted.blur, blur_run.planted.mpp, blur.field_um)
    scored = spots["blur_score"].notna()
    flagged = spots["qc_reasons"].str.split(",").map(lambda reasons: "blur" in reasons)
    assert (flagged == (spots["blur_score"] > blur.max_score)).all()
    # Blur is flagged, not dropped: the spots are kept, with qc flagged.
    assert (spots.loc[flagged, "qc"] == "flagged").all()
    kept_flagged = blur_run.kept["qc_reasons"].str.contains("blur")
    assert kept_flagged.sum() == flagged.sum()
    # Leaving out the spots whose field straddles the disc's edge. Measured: 288 spots inside,
    # 98.3 % flagged (median score 0.76); 384 outside, 1.6 % flagged (95th percentile 0.45).
    blurred, sharp = scored & (inside >= 0.99), scored & (inside <= 0.01)
    assert blurred.sum() >= 100 and sharp.sum() >= 100
    assert (flagged & blurred).sum() / blurred.sum() >= 0.9
    assert (flagged & sharp).sum() / sharp.sum() <= 0.08
    summary = json.loads(blur_run.paths.spot_qc.read_text())
    assert summary["over_threshold"]["blur"] == int(flagged.sum())
    assert summary["flagged"] >= int(flagged.sum()) and summary["verdict"] == "pass"


# ---------------------------------------------------------------------------------------------
# 6-7. The slide check, and a slide with no spot left


@pytest.fixture(scope="module")
def mostly_inked(he_tile) -> Slide:
    """Real H&E (tiatoolbox's tile) on glass at 0.5 µm/px, 1.1 × 0.9 mm of tissue, under a
    blue rectangle over its middle 0.8 mm: 83 % of its tissue spots measured over
    ink.max_fraction."""
    tissue = tissue_on_glass(he_tile, (3000, 2400), (400, 300, 2600, 2100))
    return Slide(ArraySlide(inked(tissue, (700, 250, 2300, 2150)), "inked.tif"), 0.5, "test")


def test_a_slide_mostly_under_ink_is_refused_naming_the_file_and_the_share(tmp_path, mostly_inked):
    config = _config(tmp_path)
    run_tissue(mostly_inked, "inked", config)
    with pytest.raises(SlideQualityError) as error:
        run_tiles(mostly_inked, "inked", config)
    paths = SlidePaths(tmp_path, "inked")
    message = str(error.value)
    assert message.startswith("inked.tif: the slide's tissue is mostly under ink: ")
    found = re.search(r"([\d,]+) of ([\d,]+) tissue spots \((\d+)%\) have over (\d+)% ink", message)
    assert found, message
    over, total, percent, most = (int(group.replace(",", "")) for group in found.groups())
    assert most == round(100 * config.tissue.artifacts.ink.max_fraction)
    assert over / total >= 0.5 and percent == round(100 * over / total)
    assert str(paths.quality_picture) in message and "slide_check: warn" in message
    # What was measured is on disk; no spots.tsv that looks finished.
    summary = json.loads(paths.spot_qc.read_text())
    assert summary["verdict"] == "fail: ink" and summary["shares"]["ink"] >= 0.5
    assert summary["over_threshold"]["ink"] == over and summary["tissue_spots"] == total
    assert paths.quality_picture.is_file() and paths.dropped_spots.is_file()
    assert not paths.spots.exists()


def test_slide_check_warn_goes_on_and_flagged_ink_is_kept(tmp_path, mostly_inked, caplog):
    warned = _config(tmp_path / "warn", tissue={"artifacts": {"slide_check": "warn"}})
    run_tissue(mostly_inked, "inked", warned)
    kept = run_tiles(mostly_inked, "inked", warned)
    assert "mostly under ink" in caplog.text and "so it goes on" in caplog.text
    paths = SlidePaths(warned.results, "inked")
    dropped = read_spots(paths.dropped_spots)
    assert len(kept) and read_spots(paths.spots)["spot_id"].tolist() == kept["spot_id"].tolist()
    max_ink = warned.tissue.artifacts.ink.max_fraction
    assert (kept["qc"] == "ok").all() and (kept["ink_fraction"] <= max_ink).all()
    assert dropped["qc_reasons"].str.contains("ink").mean() == 1.0
    assert json.loads(paths.spot_qc.read_text())["verdict"] == "fail: ink"

    # With ink flagged (and the slide check off), the inked spots are kept and marked.
    flagging = _config(
        tmp_path / "flag",
        tissue={"artifacts": {"slide_check": "off", "ink": {"action": "flag"}}},
    )
    run_tissue(mostly_inked, "inked", flagging)
    flagged_run = run_tiles(mostly_inked, "inked", flagging)
    on_ink = flagged_run["ink_fraction"] > max_ink
    assert on_ink.sum() > len(kept)
    assert (flagged_run.loc[on_ink, "qc"] == "flagged").all()
    assert flagged_run.loc[on_ink, "qc_reasons"].str.contains("ink").all()
    assert (flagged_run.loc[~on_ink, "qc"] == "ok").all()
    # Spots still dropped are glass, never for ink alone.
    still_dropped = read_spots(SlidePaths(flagging.results, "inked").dropped_spots)
    assert still_dropped["qc_reasons"].str.contains("glass").all()
    assert set(kept["spot_id"]) <= set(flagged_run["spot_id"])


def test_a_slide_whose_every_spot_is_dropped_has_no_tissue_left(tmp_path, he_tile, caplog):
    image = tissue_on_glass(he_tile, (2000, 2000), (300, 300, 1700, 1700))
    slide = Slide(ArraySlide(image, "dropped.tif"), 0.5, "test")
    # Every field has some blur, so blur dropped from 0 drops every tissue spot.
    config = _config(
        tmp_path,
        tissue={"artifacts": {"slide_check": "warn", "blur": {"action": "drop", "max_score": 0.0}}},
    )
    run_tissue(slide, "dropped", config)
    with pytest.raises(NoTissueError) as error:
        run_tiles(slide, "dropped", config)
    message = str(error.value)
    assert message.startswith("dropped.tif: no spot is left after quality control: all ")
    assert "tissue.artifacts can flag instead of drop" in message
    assert "out of focus" in caplog.text
    paths = SlidePaths(tmp_path, "dropped")
    dropped = read_spots(paths.dropped_spots)
    assert len(dropped) > 20 and (dropped["qc_reasons"] == "blur").all()
    assert f"all {len(dropped):,} tissue spots were dropped" in message
    assert not paths.spots.exists()


# ---------------------------------------------------------------------------------------------
# 8. Folds


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory) -> PlantedRun:
    """HER2ST C4 at 2 µm/px with a 0.5 × 2.5 mm strip of tissue folded over the tissue beside
    it (seed 0), default config (blur off, as for ink)."""
    return _run_planted(
        tmp_path_factory.mktemp("fold"),
        "c4-fold",
        _her2st("C4", COARSE_MPP),
        COARSE_MPP,
        0,
        ("fold",),
        {"features": COARSE_FEATURES, "tissue": {"artifacts": {"blur": {"action": "off"}}}},
    )


def test_a_planted_fold_is_flagged(fold_run):
    spots, config = fold_run.spots, fold_run.config
    share = _planted_share(
        spots, fold_run.planted.fold, fold_run.planted.mpp, config.features.patch_um
    )
    truth = share > TRUTH_SHARE
    flagged = spots["qc_reasons"].str.split(",").map(lambda reasons: "fold" in reasons)
    assert (flagged == (spots["fold_fraction"] > config.tissue.artifacts.fold.max_fraction)).all()
    assert (spots.loc[flagged & (spots["qc_reasons"] == "fold"), "qc"] == "flagged").all()
    # Measured: 134 spots over a quarter fold, 91.8 % flagged (C4, seed 0; 0.78-0.93 over four
    # sections and two seeds); 99 % of the flagged spots touch the planted fold; 0.78 mm² of
    # fold found of the 1.06 mm² planted.
    assert truth.sum() >= 50
    assert (flagged & truth).sum() / truth.sum() >= 0.7
    assert (flagged & (share > 0)).sum() / flagged.sum() >= 0.8
    assert fold_run.record.fold_area_mm2 > 0.5
    _, fold = read_artifacts(fold_run.paths.artifacts_mask)
    assert fold.any()
