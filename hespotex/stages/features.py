"""Stage 3, features: read each spot's patch and encode it; one Zarr store per slide.

Patches are read and encoded batch by batch (``hespotex.encoder.encoding``); features are
written chunk by chunk as batches finish, so memory stays bounded. The store records the
encoder's identity, the stain normalisation its patches went through (with the stain measured
on this slide), and, when the configured checkpoint scales its predictions by nucleus counts,
each patch's nucleus count.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from hespotex import __version__
from hespotex.config import NucleusCounter, PipelineConfig
from hespotex.encoder.encoding import EncodingTimes, encode_patches, fit_slide_stain
from hespotex.encoder.runners import OnnxRunner, TorchRunner, build_runner
from hespotex.encoder.stain import configured_setting
from hespotex.io.atomic import atomic_path
from hespotex.io.records import read_spots
from hespotex.io.slide import Slide
from hespotex.io.stores import FeatureStoreWriter, StoreKeys
from hespotex.network.checkpoint import CheckpointMeta, read_checkpoint_meta
from hespotex.paths import SlidePaths

if TYPE_CHECKING:
    from hespotex.io.reading_pool import ReadingPool

logger = logging.getLogger(__name__)


def run_features(
    slide: Slide,
    slide_id: str,
    config: PipelineConfig,
    runner: TorchRunner | OnnxRunner | None = None,
    pool: ReadingPool | None = None,
) -> dict[str, float]:
    """Encode the slide's spots into its feature store. ``runner`` is the configured encoder
    already loaded and ``pool`` the reading pool's processes (a job encoding many slides starts
    them once); without them the encoder is built here and patches are read by threads.
    Returns the spot count and where the time went (seconds reading, encoding, counting
    nuclei, and waiting for the writer)."""
    paths = SlidePaths(config.results, slide_id)
    spots = read_spots(paths.spots)
    centres = spots[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    runner = runner or build_runner(config)
    checkpoint = config.decode.checkpoint
    meta: CheckpointMeta | None = None if checkpoint is None else read_checkpoint_meta(checkpoint)
    # The counter the checkpoint's predictions are scaled by, and its stain target.
    nucleus_counter = NucleusCounter(meta.nucleus_counter if meta else NucleusCounter.NONE)
    stain = configured_setting(config.stain, meta.stain if meta else None, checkpoint)
    transform = fit_slide_stain(slide, centres, config.features, stain, config.stain.fit_patches)
    identity = runner.identity
    logger.info("encoder: %s, run by %s", identity.describe(), runner.describe())
    attributes = {
        "slide_id": slide_id,
        "slide_path": slide.source,
        "mpp": float(slide.mpp),
        "mpp_source": slide.mpp_source,
        "patch_px": config.features.patch_px,
        "patch_mpp": config.features.patch_mpp,
        "patch_um": config.features.patch_um,
        "coords_units": "level-0 pixels (x, y)",
        StoreKeys.ENCODER: identity.model_dump(mode="json"),
        StoreKeys.NUCLEUS_COUNTER: nucleus_counter.value,
        StoreKeys.STAIN: stain.model_dump(mode="json"),
        StoreKeys.STAIN_SOURCE: None
        if transform is None
        else transform.source.model_dump(mode="json"),
        "hespotex_version": __version__,
    }
    times = EncodingTimes()
    with (
        atomic_path(paths.features) as tmp,
        FeatureStoreWriter(
            tmp, centres, identity.feature_dim, config.features.chunk_rows, attributes
        ) as writer,
    ):
        nucleus_counts = []
        batches = encode_patches(
            slide,
            centres,
            runner,
            config.features,
            slide_id,
            nucleus_counter,
            transform,
            pool,
            times,
        )
        for batch in batches:
            writer.append(batch.features)
            if batch.nucleus_counts is not None:
                nucleus_counts.append(batch.nucleus_counts)
        written = writer.close(np.concatenate(nucleus_counts) if nucleus_counts else None)
    breakdown = {"spots": written, **times.rounded(), "writing": round(writer.waited, 3)}
    logger.info(
        "wrote %d × %d features to %s (seconds: %s)",
        written,
        identity.feature_dim,
        paths.features,
        ", ".join(f"{name} {value}" for name, value in breakdown.items() if name != "spots"),
    )
    return breakdown
