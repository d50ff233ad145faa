"""Stage 3, features: read each spot's patch and encode it; one Zarr store per slide.

Patches are read from the pyramid level nearest above the patch resolution and resampled.
Reading runs in a few threads ahead of the encoder (OpenSlide and the TIFF codecs release the
GIL), at most ``num_workers + 1`` batches in flight, so memory stays bounded.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from hespotex import __version__
from hespotex.atomic import atomic_path
from hespotex.config import FeaturesConfig, PipelineConfig
from hespotex.encoders import ImageEncoder, load_encoder, pick_device, to_model_input
from hespotex.errors import EncoderMemoryError
from hespotex.paths import SlidePaths
from hespotex.slide import ReadPlan, Slide, check_patch_geometry
from hespotex.store import FeatureStoreWriter
from hespotex.tiling import read_spots

logger = logging.getLogger(__name__)


def iter_patch_batches(
    slide: Slide, centres_px: np.ndarray, plan: ReadPlan, batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    """(B, H, W, 3) uint8 batches in spot order, read ahead by ``workers`` threads."""

    def read(start: int) -> np.ndarray:
        rows = centres_px[start : start + batch_size]
        return np.stack([slide.read_field((x, y), plan) for x, y in rows])

    starts = range(0, len(centres_px), batch_size)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for start in starts:
            pending.append(pool.submit(read, start))
            if len(pending) > max(1, workers):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def encode_batch(encoder: ImageEncoder, images: torch.Tensor, slide_path) -> torch.Tensor:
    """Encode a batch; on a GPU out-of-memory, encode it in halves instead (down to single
    patches) rather than failing the slide."""
    try:
        return encoder(images)
    except torch.cuda.OutOfMemoryError as error:
        if len(images) == 1:
            raise EncoderMemoryError(
                slide_path, f"the encoder runs out of GPU memory even on one patch: {error}"
            ) from None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(images) // 2
        logger.warning(
            "out of GPU memory on a batch of %d patches; encoding it as %d + %d",
            len(images),
            half,
            len(images) - half,
        )
        return torch.cat(
            [
                encode_batch(encoder, images[:half], slide_path),
                encode_batch(encoder, images[half:], slide_path),
            ]
        )


def encode_patches(
    slide: Slide,
    centres_px: np.ndarray,
    encoder: ImageEncoder,
    config: FeaturesConfig,
    device: torch.device,
    description: str = "encoding",
) -> Iterator[np.ndarray]:
    """Features (B × D float32) for the patches centred on ``centres_px``, batch by batch."""
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
    batches = iter_patch_batches(slide, centres_px, plan, config.batch_size, config.num_workers)
    with (
        torch.inference_mode(),
        tqdm(total=len(centres_px), desc=description, unit="patch", mininterval=5) as progress,
    ):
        for patches in batches:
            images = to_model_input(patches).to(device, non_blocking=True)
            features = encode_batch(encoder, images, slide.path)
            progress.update(len(patches))
            yield features.float().cpu().numpy()


def run_features(slide: Slide, slide_id: str, config: PipelineConfig) -> int:
    paths = SlidePaths(config.results, slide_id)
    spots = read_spots(paths.spots)
    centres = spots[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    device = pick_device(config.features.device)
    encoder = load_encoder(config.encoder).to(device)
    identity = encoder.identity
    logger.info("encoder: %s, on %s", identity.describe(), device)
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
        "hespotex_version": __version__,
    }
    with atomic_path(paths.features) as tmp:
        writer = FeatureStoreWriter(
            tmp, centres, identity.feature_dim, config.features.chunk_rows, attributes
        )
        for features in encode_patches(
            slide, centres, encoder, config.features, device, description=slide_id
        ):
            writer.append(features)
        written = writer.close()
    logger.info("wrote %d × %d features to %s", written, identity.feature_dim, paths.features)
    return written
