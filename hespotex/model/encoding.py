"""Patches read and encoded batch by batch: the one loop the features stage and training share.

Patches are read from the pyramid level nearest above the patch resolution and resampled,
region by region (``hespotex.io.patches``), ahead of the encoder (``hespotex.model.runners``),
so training and inference see the same pixels. When a nucleus counter is named, each patch's
nuclei are counted on the same pixels the encoder sees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from hespotex.config import FeaturesConfig, NucleusCounter
from hespotex.io.patches import iter_patch_batches
from hespotex.io.slide import Slide, check_patch_geometry
from hespotex.model.nuclei import count_nuclei
from hespotex.model.runners import OnnxRunner, TorchRunner

logger = logging.getLogger(__name__)


class EncodedBatch(NamedTuple):
    features: np.ndarray
    nucleus_counts: np.ndarray | None


def encode_patches(
    slide: Slide,
    centres_px: np.ndarray,
    runner: TorchRunner | OnnxRunner,
    config: FeaturesConfig,
    description: str = "encoding",
    nucleus_counter: NucleusCounter = NucleusCounter.NONE,
) -> Iterator[EncodedBatch]:
    """Features (B × D float32) for the patches centred on ``centres_px``, batch by batch,
    with the patches' nucleus counts when a counter is named."""
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
    batches = iter_patch_batches(
        slide, centres_px, plan, config.batch_size, config.num_workers, config.max_region_px
    )
    with tqdm(total=len(centres_px), desc=description, unit="patch", mininterval=5) as progress:
        for patches in batches:
            features = runner(patches, slide.path)
            nucleus_counts = (
                None
                if nucleus_counter == NucleusCounter.NONE
                else count_nuclei(patches, config.patch_mpp)
            )
            progress.update(len(patches))
            yield EncodedBatch(features, nucleus_counts)
