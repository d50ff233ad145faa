"""Stage 1, tissue: a tissue mask from a low-resolution copy of the slide, plus QC images.

H&E tissue is coloured and glass is grey-white, so the mask is Otsu's threshold on HSV
saturation (floored, so that an empty slide finds nothing rather than thresholding noise),
then a closing, small-hole filling and small-object removal from scikit-image. A slide whose
tissue does not look like H&E (``hespotex.stages.stain_check``) is refused, or warned about,
as ``tissue.stain_check`` says; the measured numbers go into ``tissue.json``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk, remove_small_holes, remove_small_objects
from skimage.segmentation import find_boundaries

from hespotex import __version__
from hespotex.config import PipelineConfig, StainCheck, TissueConfig
from hespotex.errors import NotBrightfieldError, WrongStainError
from hespotex.io.atomic import write_json, write_png
from hespotex.io.slide import Slide, check_patch_geometry
from hespotex.paths import SlidePaths
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


def tissue_mask(rgb: np.ndarray, mask_mpp: float, config: TissueConfig) -> np.ndarray:
    """Boolean tissue mask of an RGB image whose pixels are ``mask_mpp`` µm wide."""
    saturation = rgb2hsv(rgb)[..., 1]
    if saturation.max() - saturation.min() < 1e-6:
        return np.zeros(saturation.shape, dtype=bool)
    threshold = max(float(threshold_otsu(saturation)), config.min_saturation)
    mask = saturation > threshold
    pixel_area_um2 = mask_mpp * mask_mpp
    radius_px = round(config.closing_um / mask_mpp)
    if radius_px > 0:
        mask = closing(mask, disk(radius_px))
    mask = remove_small_holes(mask, max_size=round(config.min_hole_um2 / pixel_area_um2))
    return remove_small_objects(mask, max_size=round(config.min_object_um2 / pixel_area_um2))


def outline_overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    overlay = rgb.copy()
    edges = find_boundaries(mask, mode="thick")
    overlay[edges] = OUTLINE_RGB
    return overlay


@dataclass(frozen=True)
class TissueRecord:
    """What later stages need to know about the slide; stored as ``tissue.json``."""

    slide_id: str
    slide_path: str
    reader: str
    width_px: int
    height_px: int
    mpp: float
    mpp_source: str
    mask_downsample: float
    mask_mpp: float
    tissue_area_mm2: float
    hespotex_version: str
    # The stain check's verdict and numbers (absent from records of older versions).
    stain_check: dict | None = None

    @classmethod
    def read(cls, path: Path) -> TissueRecord:
        import json

        return cls(**json.loads(Path(path).read_text()))


def check_stain(stain: StainMeasurement, action: StainCheck, path: Path) -> None:
    """Refuse (``error``) or warn about (``warn``) a slide whose tissue is not H&E."""
    if action == StainCheck.OFF or stain.verdict in ACCEPTED_VERDICTS:
        return
    cause = (
        f"the tissue looks like {stain.verdict.value}, not H&E: {stain.describe()}; HESpotEx "
        "predicts expression from H&E only"
    )
    if action == StainCheck.ERROR:
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
    mask = tissue_mask(overview, mask_mpp, config.tissue)
    stain = measure_stain(overview, mask)
    logger.info("stain check: %s; %s", stain.verdict.value, stain.describe())
    check_stain(stain, config.tissue.stain_check, slide.path)
    area_mm2 = float(mask.sum()) * mask_mpp * mask_mpp / 1e6
    logger.info(
        "tissue mask %s px at %.2f µm/px: %.2f mm² of tissue (%.1f%% of the slide)",
        mask.shape[::-1],
        mask_mpp,
        area_mm2,
        100 * mask.mean(),
    )
    record = TissueRecord(
        slide_id=slide_id,
        slide_path=str(slide.path),
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
    )
    write_png(paths.thumbnail, overview)
    write_png(paths.tissue_mask, (mask * 255).astype(np.uint8))
    write_png(paths.tissue_qc, outline_overlay(overview, mask))
    write_json(paths.tissue_record, asdict(record))
    return record


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image) > 127
