"""Stage 3, features: read each spot's patch and encode it; one Zarr store per slide.

Patches are read from the pyramid level nearest above the patch resolution and resampled,
region by region (``hespotex.patches``), ahead of the encoder (``hespotex.runners``); features
are written chunk by chunk as batches finish, so memory stays bounded. When the configured
checkpoint scales its predictions by nucleus counts, each patch's nuclei are counted here too,
on the same pixels the encoder sees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from hespotex import __version__
from hespotex.atomic import atomic_path
from hespotex.checkpoint import read_checkpoint_meta
from hespotex.config import FeaturesConfig, NucleusCounter, PipelineConfig
from hespotex.nuclei import count_nuclei
from hespotex.patches import iter_patch_batches
from hespotex.paths import SlidePaths
from hespotex.runners import OnnxRunner, TorchRunner, build_runner
from hespotex.slide import Slide, check_patch_geometry
from hespotex.store import FeatureStoreWriter
from hespotex.tiling import read_spots

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


def checkpoint_nucleus_counter(config: PipelineConfig) -> NucleusCounter:
    """The counter the configured checkpoint's predictions are scaled by (none without one)."""
    if config.decode.checkpoint is None:
        return NucleusCounter.NONE
    return NucleusCounter(read_checkpoint_meta(config.decode.checkpoint).nucleus_counter)


def run_features(slide: Slide, slide_id: str, config: PipelineConfig) -> int:
    paths = SlidePaths(config.results, slide_id)
    spots = read_spots(paths.spots)
    centres = spots[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    runner = build_runner(config)
    nucleus_counter = checkpoint_nucleus_counter(config)
    identity = runner.identity
    logger.info("encoder: %s, run by %s", identity.describe(), runner.describe())
    attributes = {
        "slide_id": slide_id,
        "slide_path": str(slide.path),
        "mpp": float(slide.mpp),
        "mpp_source": slide.mpp_source,
        "patch_px": config.features.patch_px,
        "patch_mpp": config.features.patch_mpp,
        "patch_um": config.features.patch_um,
        "coords_units": "level-0 pixels (x, y)",
        "encoder": identity.architecture,
        "encoder_weights": identity.weights,
        "encoder_weights_sha256": identity.weights_sha256,
        "encoder_random_weights": identity.is_random,
        "encoder_description": identity.describe(),
        "nucleus_counter": nucleus_counter.value,
        "hespotex_version": __version__,
    }
    with atomic_path(paths.features) as tmp:
        writer = FeatureStoreWriter(
            tmp, centres, identity.feature_dim, config.features.chunk_rows, attributes
        )
        nucleus_counts = []
        batches = encode_patches(slide, centres, runner, config.features, slide_id, nucleus_counter)
        for batch in batches:
            writer.append(batch.features)
            if batch.nucleus_counts is not None:
                nucleus_counts.append(batch.nucleus_counts)
        written = writer.close(np.concatenate(nucleus_counts) if nucleus_counts else None)
    logger.info("wrote %d × %d features to %s", written, identity.feature_dim, paths.features)
    return written
