"""Patches read and encoded batch by batch: the one loop the features stage and training share.

Patches are read from the pyramid level nearest above the patch resolution and resampled,
region by region (``hespotex.io.patches``), ahead of the encoder (``hespotex.encoder.runners``),
so training and inference see the same pixels. With stain normalisation, the slide's stain is
measured once on patches spread over its spots (``fit_slide_stain``) and every patch is mapped
to the target's stain before the encoder sees it. When a nucleus counter is named, each
patch's nuclei are counted on the same (normalised) pixels the encoder sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from tqdm import tqdm

from hespotex.config import FeaturesConfig, NucleusCounter, StainNormalisation
from hespotex.encoder.nuclei import count_nuclei
from hespotex.encoder.runners import OnnxRunner, TorchRunner
from hespotex.encoder.stain import StainSetting, StainTransform, fit_profile
from hespotex.io.backends import ArraySlide
from hespotex.io.patches import iter_patch_batches
from hespotex.io.slide import Slide, check_patch_geometry

if TYPE_CHECKING:
    from hespotex.io.reading_pool import ReadingPool

logger = logging.getLogger(__name__)


class EncodedBatch(NamedTuple):
    features: np.ndarray
    nucleus_counts: np.ndarray | None


@dataclass
class EncodingTimes:
    """Seconds the encoding loop spent waiting for patches, in the encoder and counting
    nuclei: where a slide's features time goes."""

    reading: float = 0.0
    encoding: float = 0.0
    counting: float = 0.0

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in asdict(self).items()}


def sample_patches(
    slide: Slide, centres_px: np.ndarray, config: FeaturesConfig, count: int
) -> np.ndarray:
    """Up to ``count`` patches spread evenly along the spot order (which the tiles stage lays
    block by block over the tissue), as the encoder would read them."""
    index = np.unique(np.linspace(0, len(centres_px) - 1, min(count, len(centres_px))).round())
    plan = slide.plan(config.patch_um, config.patch_mpp)
    chosen = np.asarray(centres_px, dtype=np.float64)[index.astype(np.int64)]
    batches = iter_patch_batches(slide, chosen, plan, len(chosen), 0, config.max_region_px)
    return np.concatenate(list(batches))


def fit_slide_stain(
    slide: Slide,
    centres_px: np.ndarray,
    config: FeaturesConfig,
    setting: StainSetting,
    fit_patches: int,
) -> StainTransform | None:
    """The slide's stain measured once, on ``fit_patches`` of its patches, mapped to
    ``setting``'s target; None without normalisation."""
    if setting.method == StainNormalisation.NONE:
        return None
    patches = sample_patches(slide, centres_px, config, fit_patches)
    source = fit_profile(setting.method, [patches], slide.path)
    logger.info(
        "stain measured on %d patches: %s; normalised with %s",
        len(patches),
        source.model_dump(exclude_none=True, exclude={"method"}),
        setting.describe(),
    )
    return StainTransform(source, setting.target)


def encode_patches(
    slide: Slide,
    centres_px: np.ndarray,
    runner: TorchRunner | OnnxRunner,
    config: FeaturesConfig,
    description: str = "encoding",
    nucleus_counter: NucleusCounter = NucleusCounter.NONE,
    stain: StainTransform | None = None,
    pool: ReadingPool | None = None,
    times: EncodingTimes | None = None,
) -> Iterator[EncodedBatch]:
    """Features (B × D float32) for the patches centred on ``centres_px``, batch by batch,
    with the patches' nucleus counts when a counter is named; ``stain`` (from
    ``fit_slide_stain``) maps every patch before either sees it, where it is read. Patches
    are read by ``pool`` (processes) when given and the slide is a file, else by
    threads."""
    plan = slide.plan(config.patch_um, config.patch_mpp)
    logger.info(
        "patches: %d px at %.3f µm/px, read as %d px from level %d (%.3f µm/px)",
        plan.output_px,
        config.patch_mpp,
        plan.level_px,
        plan.level,
        slide.level_mpp(plan.level),
    )
    check_patch_geometry(slide, config.patch_um, config.patch_mpp, config.max_upsampling)
    if pool is not None and slide.reader != ArraySlide.name:
        batches = pool.batches(
            slide, description, centres_px, plan, config.batch_size, config.max_region_px, stain
        )
    else:
        batches = iter_patch_batches(
            slide,
            centres_px,
            plan,
            config.batch_size,
            config.num_workers,
            config.max_region_px,
            stain,
        )
    times = times if times is not None else EncodingTimes()
    with (
        closing(batches),
        tqdm(total=len(centres_px), desc=description, unit="patch", mininterval=5) as progress,
    ):
        while True:
            started = time.perf_counter()
            patches = next(batches, None)
            read = time.perf_counter()
            times.reading += read - started
            if patches is None:
                return
            features = runner(patches, slide.path)
            encoded = time.perf_counter()
            times.encoding += encoded - read
            nucleus_counts = None
            if nucleus_counter != NucleusCounter.NONE:
                nucleus_counts = count_nuclei(patches, config.patch_mpp)
                times.counting += time.perf_counter() - encoded
            progress.update(len(patches))
            yield EncodedBatch(features, nucleus_counts)
