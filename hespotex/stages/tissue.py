"""Stage 1, tissue: a tissue mask from a low-resolution copy of the slide, plus QC images.

Marker ink is found first, by its colour (``hespotex.stages.artifacts``), and left out of
what follows. H&E tissue is coloured and glass is grey-white, so the mask is Otsu's threshold
on HSV saturation over the pixels that are not ink (floored, so that an empty slide finds
nothing rather than thresholding noise), plus the tissue that can be told apart under light
ink, then a closing, small-hole filling and small-object removal from scikit-image; ink that
hides what is beneath it never counts as tissue. Folds are then found in the tissue. A slide
whose tissue does not look like H&E (``hespotex.stages.stain_check``, judged on the tissue
without the ink) is refused, or warned about, as ``tissue.stain_check`` says; the measured
numbers, and the area of each ink colour and of folds, go into ``tissue.json``; the ink and
fold maps into ``artifacts_mask.png`` for the tiles stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk, remove_small_holes, remove_small_objects
from skimage.segmentation import find_boundaries

from hespotex import __version__
from hespotex.config import CheckAction, PipelineConfig, TissueConfig
from hespotex.errors import NotBrightfieldError, WrongStainError
from hespotex.io.atomic import write_png
from hespotex.io.records import TissueRecord, encode_artifacts
from hespotex.io.slide import Slide, check_patch_geometry
from hespotex.paths import SlidePaths
from hespotex.stages.artifacts import (
    fold_mask,
    ink_colour_areas,
    ink_cover,
    ink_labels,
    near_ink,
    tissue_under_ink,
)
from hespotex.stages.stain_check import (
    BRIGHTFIELD_MIN_MEDIAN_VALUE,
    StainMeasurement,
    StainVerdict,
    measure_stain,
    median_brightness,
)

logger = logging.getLogger(__name__)

OUTLINE_RGB = (0, 200, 0)
# Verdicts a slide passes the stain check with.
ACCEPTED_VERDICTS = {StainVerdict.HE, StainVerdict.TOO_LITTLE_TISSUE}


@dataclass(frozen=True)
class TissueDetection:
    """The overview's tissue mask, ink labels (``io.records.INK_CODES``) and fold mask."""

    tissue: np.ndarray
    ink: np.ndarray
    fold: np.ndarray


def detect_tissue(rgb: np.ndarray, mask_mpp: float, config: TissueConfig) -> TissueDetection:
    """Tissue, ink and folds of an RGB image whose pixels are ``mask_mpp`` µm wide."""
    ink = ink_labels(rgb, mask_mpp, config.artifacts.ink)
    covered = ink_cover(ink, mask_mpp)
    visible = ~covered
    saturation = rgb2hsv(rgb)[..., 1]
    no_fold = np.zeros(saturation.shape, dtype=bool)
    if not visible.any() or np.ptp(saturation[visible]) < 1e-6:
        return TissueDetection(no_fold.copy(), ink, no_fold)
    threshold = max(float(threshold_otsu(saturation[visible])), config.min_saturation)
    seen = (saturation > threshold) & visible
    hidden_by_ink = covered & ~tissue_under_ink(rgb, ink, covered, seen, mask_mpp)
    mask = (saturation > threshold) & ~hidden_by_ink
    pixel_area_um2 = mask_mpp * mask_mpp
    radius_px = round(config.closing_um / mask_mpp)
    if radius_px > 0:
        mask = closing(mask, disk(radius_px))
    mask = remove_small_holes(mask, max_size=round(config.min_hole_um2 / pixel_area_um2))
    mask = remove_small_objects(mask, max_size=round(config.min_object_um2 / pixel_area_um2))
    mask &= ~hidden_by_ink
    fold = fold_mask(
        rgb,
        mask & ~near_ink(covered, mask_mpp),
        mask_mpp,
        config.artifacts.fold,
        config.min_object_um2 / 4,
    )
    return TissueDetection(mask, ink, fold)


def tissue_mask(rgb: np.ndarray, mask_mpp: float, config: TissueConfig) -> np.ndarray:
    """Boolean tissue mask of an RGB image whose pixels are ``mask_mpp`` µm wide."""
    return detect_tissue(rgb, mask_mpp, config).tissue


def outline_overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    overlay = rgb.copy()
    edges = find_boundaries(mask, mode="thick")
    overlay[edges] = OUTLINE_RGB
    return overlay


def check_stain(stain: StainMeasurement, action: CheckAction, path: Path) -> None:
    """Refuse (``error``) or warn about (``warn``) a slide whose tissue is not H&E."""
    if action == CheckAction.OFF or stain.verdict in ACCEPTED_VERDICTS:
        return
    cause = (
        f"the tissue looks like {stain.verdict.value}, not H&E: {stain.describe()}; HESpotEx "
        "predicts expression from H&E only"
    )
    if action == CheckAction.ERROR:
        raise WrongStainError(
            path, f"{cause} (set tissue.stain_check: warn to run such slides anyway)"
        )
    logger.warning("%s: %s (tissue.stain_check: warn, so it goes on)", path, cause)


def run_tissue(slide: Slide, slide_id: str, config: PipelineConfig) -> TissueRecord:
    paths = SlidePaths(config.results, slide_id)
    features = config.features
    check_patch_geometry(slide, features.patch_um, features.patch_mpp, features.max_upsampling)
    overview, downsample = slide.read_overview(config.tissue.mask_mpp)
    brightness = median_brightness(overview)
    if brightness < BRIGHTFIELD_MIN_MEDIAN_VALUE:
        # Whatever tissue.stain_check says: without bright glass there is no tissue mask.
        raise NotBrightfieldError(
            slide.path,
            f"the slide is mostly dark (median brightness {brightness:.2f}, brightfield from "
            f"{BRIGHTFIELD_MIN_MEDIAN_VALUE}): it looks like fluorescence, not brightfield "
            "H&E, which HESpotEx needs",
        )
    mask_mpp = slide.mpp * downsample
    detection = detect_tissue(overview, mask_mpp, config.tissue)
    mask = detection.tissue
    stain = measure_stain(overview, mask & (detection.ink == 0))
    logger.info("stain check: %s; %s", stain.verdict.value, stain.describe())
    check_stain(stain, config.tissue.stain_check, slide.path)
    area_mm2 = float(mask.sum()) * mask_mpp * mask_mpp / 1e6
    ink_areas = ink_colour_areas(detection.ink, mask_mpp)
    fold_area_mm2 = round(float(detection.fold.sum()) * mask_mpp * mask_mpp / 1e6, 4)
    logger.info(
        "tissue mask %s px at %.2f µm/px: %.2f mm² of tissue (%.1f%% of the slide); ink %s; "
        "folds %.3f mm²",
        mask.shape[::-1],
        mask_mpp,
        area_mm2,
        100 * mask.mean(),
        ", ".join(f"{colour} {area:.3f} mm²" for colour, area in ink_areas.items()) or "none",
        fold_area_mm2,
    )
    record = TissueRecord(
        slide_id=slide_id,
        slide_path=slide.source,
        reader=slide.reader,
        width_px=slide.dimensions[0],
        height_px=slide.dimensions[1],
        mpp=float(slide.mpp),
        mpp_source=slide.mpp_source,
        mask_downsample=downsample,
        mask_mpp=mask_mpp,
        tissue_area_mm2=area_mm2,
        hespotex_version=__version__,
        stain_check={**stain.as_record(), "action": config.tissue.stain_check.value},
        ink_area_mm2=ink_areas,
        fold_area_mm2=fold_area_mm2,
    )
    write_png(paths.thumbnail, overview)
    write_png(paths.tissue_mask, (mask * 255).astype(np.uint8))
    write_png(paths.artifacts_mask, encode_artifacts(detection.ink, detection.fold))
    write_png(paths.tissue_qc, outline_overlay(overview, mask))
    record.write(paths.tissue_record)
    return record
