"""The frozen image encoder: built locally, weights from a local file, never from a hub.

``vit-b-32`` is OpenCLIP's ViT-B/32 vision tower with QuickGELU, the architecture of QuiltNet
used by the paper; a QuiltNet ``open_clip_pytorch_model.bin`` (full CLIP state dict) or a
vision-tower-only file loads into it. ``vit-tiny-32`` is the same design at demo size. Weights
load without unpickling code: safetensors, or ``torch.load(weights_only=True)``.
Features are L2-normalised, as CLIP's ``encode_image(normalize=True)`` returns them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch import nn

from hespotex.config import EncoderArchitecture, EncoderConfig
from hespotex.errors import ConfigError, InputDataError
from hespotex.model.identity import (
    CLIP_EMBED_DIM,
    STAIN_STATS_DIM,
    EncoderIdentity,
    encoder_identity,
)

logger = logging.getLogger(__name__)

_VISION_CONFIGS = {
    EncoderArchitecture.VIT_B_32: {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    EncoderArchitecture.VIT_TINY_32: {
        "image_size": 224,
        "layers": 4,
        "width": 192,
        "head_width": 64,
        "patch_size": 32,
    },
}


class ImageEncoder(nn.Module):
    """Takes RGB in [0, 1]. ViTs see it normalised and return unit-length vectors; the
    statistics encoder sees raw RGB and returns its statistics."""

    def __init__(self, tower: nn.Module, identity: EncoderIdentity):
        super().__init__()
        self.tower = tower
        self.identity = identity
        self.register_buffer("mean", torch.tensor(identity.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(identity.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.tower, StainStatistics):
            return self.tower(images)
        features = self.tower((images - self.mean) / self.std)
        return nn.functional.normalize(features.float(), dim=-1)


def build_tower(architecture: EncoderArchitecture) -> nn.Module:
    return _open_clip_tower_builder()(
        CLIP_EMBED_DIM, _VISION_CONFIGS[architecture], quick_gelu=True
    )


def _open_clip_tower_builder():
    """open_clip's vision-tower builder, imported without Hugging Face transformers: open_clip
    imports it for text towers we never build, and with transformers 5 that costs ≈ 8 s per
    process on the GPU machine (1.5 s here) — per slide, since every features job is a
    process. open_clip treats transformers as optional; a later ``import transformers`` by
    the caller works as usual."""
    blocked = "transformers" not in sys.modules
    if blocked:
        sys.modules["transformers"] = None
    try:
        from open_clip.model import _build_vision_tower
    finally:
        if blocked:
            del sys.modules["transformers"]
    return _build_vision_tower


# Ruifrok & Johnston's stain vectors, as scikit-image's rgb2hed uses them.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_RGB_FROM_HED[2] = torch.linalg.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED).float()


class StainStatistics(nn.Module):
    """Weights-free patch features: colour, optical density and H/E/D stain statistics, a
    coarse 3 × 3 layout of haematoxylin and eosin, grey-level histogram and gradient energy
    (texture). Vectorised over the batch; input RGB in [0, 1]; 48 values, zero-padded to 64."""

    def __init__(self):
        super().__init__()
        self.register_buffer("hed_from_rgb", _HED_FROM_RGB)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack([sobel, sobel.T]).unsqueeze(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Half resolution keeps every statistic meaningful at a quarter of the cost.
        rgb = nn.functional.avg_pool2d(images.float(), 2) if images.shape[-1] >= 64 else images
        density = -torch.log(rgb.clamp(min=1 / 255))
        stains = torch.einsum("bchw,cd->bdhw", density, self.hed_from_rgb)
        grey = rgb.mean(dim=1, keepdim=True)
        gradients = nn.functional.conv2d(grey, self.sobel, padding=1).pow(2).sum(1).sqrt()
        histogram = torch.stack(
            [
                ((grey >= low) & (grey < low + 0.125)).float().mean((1, 2, 3))
                for low in torch.arange(0, 1, 0.125).tolist()
            ],
            dim=1,
        )
        # A 3 × 3 mean by reshaping (adaptive pooling to 3 does not export to ONNX).
        rows, columns = stains.shape[-2] // 3, stains.shape[-1] // 3
        layout = (
            stains[:, :2, : 3 * rows, : 3 * columns]
            .reshape(-1, 2, 3, rows, 3, columns)
            .mean((3, 5))
            .flatten(1)
        )
        parts = [
            rgb.mean((2, 3)), rgb.std((2, 3)),
            density.mean((2, 3)), density.std((2, 3)),
            stains.mean((2, 3)), stains.std((2, 3)),
            layout,
            histogram,
            gradients.mean((1, 2)).unsqueeze(1), gradients.std((1, 2)).unsqueeze(1),
            (gradients > 0.25).float().mean((1, 2)).unsqueeze(1),
            (grey < 0.5).float().mean((1, 2, 3)).unsqueeze(1),
        ]  # fmt: skip
        features = torch.cat(parts, dim=1)
        return nn.functional.pad(features, (0, STAIN_STATS_DIM - features.shape[1]))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a plain torch state dict; pickled code is refused."""
    if not path.is_file():
        raise ConfigError(f"{path}: the encoder weights file does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types on bad files
        raise InputDataError(
            path, f"not a loadable weights file (safetensors or tensors-only torch file): {error}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputDataError(path, "the weights file does not hold a mapping of tensors")
    return state


def _vision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a whole CLIP state dict (QuiltNet's file) or the vision tower alone."""
    for prefix in ("module.visual.", "visual."):
        if any(key.startswith(prefix) for key in state):
            return {
                key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)
            }
    return state


def load_encoder(config: EncoderConfig) -> ImageEncoder:
    identity = encoder_identity(config)
    if not config.architecture.needs_weights:
        return ImageEncoder(StainStatistics(), identity).eval()
    if config.is_random:
        torch.manual_seed(config.seed)
        tower = build_tower(config.architecture)
        logger.warning(
            "encoder %s uses RANDOM weights (seed %d): features carry no pretrained knowledge",
            config.architecture.value,
            config.seed,
        )
    else:
        path = Path(config.weights)
        state = _vision_keys(read_state_dict(path))
        tower = build_tower(config.architecture)
        missing, unexpected = tower.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InputDataError(
                path,
                f"weights do not fit {config.architecture.value}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}",
            )
    return ImageEncoder(tower, identity).eval()
