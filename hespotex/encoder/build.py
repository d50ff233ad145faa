"""The frozen image encoder, built from its spec (``hespotex.encoder_specs``) by one loader.

Three libraries build networks from data: timm (``create_model`` with the spec's keyword
arguments), open_clip (a vision tower from its model config, the arguments overriding the
vision config) and Hugging Face transformers (a model from its ``model_type`` config); the
weights-free stain statistics need none. The network's output is pooled as the spec says
(class token, class token beside the mean of the patch tokens, their mean, or the network's own
pooled output). Weights load without unpickling code (safetensors, or
``torch.load(weights_only=True)``), are mapped onto the network's keys by the spec's layout
(prefixes, renames, ignored keys, or by position for a file in another naming), and a file
whose keys or shapes do not fit is refused naming the encoder and the keys.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch import nn

from hespotex.config import EncoderConfig
from hespotex.encoder.identity import EncoderIdentity, encoder_identity, weights_path
from hespotex.encoder_specs import STAIN_STATS_DIM, EncoderSpec, Family, Pooling, WeightsLayout
from hespotex.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

SHOWN_KEYS = 6


class ImageEncoder(nn.Module):
    """Takes RGB in [0, 1]. Networks see it normalised with the spec's mean and std and return
    pooled features (unit-length where the spec says so); the statistics encoder sees raw RGB
    and returns its statistics."""

    def __init__(self, tower: nn.Module, spec: EncoderSpec, identity: EncoderIdentity):
        super().__init__()
        self.tower = tower
        self.identity = identity
        self.raw_input = spec.family is Family.STAIN_STATS
        self.l2_normalise = spec.l2_normalise
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.raw_input:
            return self.tower(images)
        features = self.tower((images - self.mean) / self.std).float()
        return nn.functional.normalize(features, dim=-1) if self.l2_normalise else features


class PooledNetwork(nn.Module):
    """A network and its pooling: normalised images → one vector per patch. ``network`` is the
    module the weights file loads into."""

    def __init__(self, network: nn.Module, spec: EncoderSpec, prefix_tokens: int):
        super().__init__()
        self.network = network
        self.family = spec.family
        self.pooling = spec.pooling
        self.prefix_tokens = prefix_tokens

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        if self.family is Family.TRANSFORMERS:
            return self.network(pixel_values=images).last_hidden_state
        return self.network.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pooling is Pooling.POOLED:
            if self.family is Family.TRANSFORMERS:
                return self.network(pixel_values=images).pooler_output
            return self.network(images)
        tokens = self.tokens(images)
        cls, patches = tokens[:, 0], tokens[:, self.prefix_tokens :]
        if self.pooling is Pooling.CLS:
            return cls
        if self.pooling is Pooling.MEAN:
            return patches.mean(dim=1)
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)


def _layer(name: str) -> type[nn.Module]:
    """A layer class named in a spec (one of ``LAYER_NAMES``): timm's, else torch's."""
    import timm.layers

    return getattr(timm.layers, name, None) or getattr(nn, name)


def _timm_network(spec: EncoderSpec) -> tuple[nn.Module, int]:
    import timm

    # num_classes 0: no classifier, the network ends at its pooled features.
    kwargs = {"num_classes": 0} | {
        key: _layer(value) if key in ("mlp_layer", "act_layer", "norm_layer") else value
        for key, value in spec.model_kwargs.items()
    }
    try:
        network = timm.create_model(spec.model, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConfigError(f"encoder {spec.name}: timm cannot build {spec.model}: {error}") from None
    return network, getattr(network, "num_prefix_tokens", 1)


def _open_clip_network(spec: EncoderSpec) -> tuple[nn.Module, int]:
    if spec.pooling is not Pooling.POOLED:
        raise ConfigError(
            f"encoder {spec.name}: an open_clip vision tower gives its image embedding; "
            "set pooling: pooled"
        )
    get_model_config, build_vision_tower = _open_clip_builders()
    model_config = get_model_config(spec.model)
    if model_config is None:
        raise ConfigError(f"encoder {spec.name}: open_clip has no model {spec.model}")
    vision = {**model_config["vision_cfg"], **spec.model_kwargs}
    tower = build_vision_tower(
        model_config["embed_dim"], vision, quick_gelu=model_config.get("quick_gelu", False)
    )
    return tower, 0


def _open_clip_builders():
    """open_clip's model configs and vision-tower builder, imported without Hugging Face
    transformers: open_clip imports it for text towers we never build, and with transformers 5
    that costs ≈ 8 s per process on the GPU machine (1.5 s here) — per slide, since every
    features job is a process. open_clip treats transformers as optional; a later
    ``import transformers`` by the caller works as usual."""
    blocked = "transformers" not in sys.modules
    if blocked:
        sys.modules["transformers"] = None
    try:
        from open_clip.factory import get_model_config
        from open_clip.model import _build_vision_tower
    finally:
        if blocked:
            del sys.modules["transformers"]
    return get_model_config, _build_vision_tower


def _transformers_network(spec: EncoderSpec) -> tuple[nn.Module, int]:
    from transformers import AutoConfig, AutoModel

    try:
        model_config = AutoConfig.for_model(spec.model, **spec.model_kwargs)
    except ValueError as error:
        raise ConfigError(f"encoder {spec.name}: transformers: {error}") from None
    network = AutoModel.from_config(model_config)
    return network, 1 + getattr(model_config, "num_register_tokens", 0)


_BUILDERS = {
    Family.TIMM: _timm_network,
    Family.OPEN_CLIP: _open_clip_network,
    Family.TRANSFORMERS: _transformers_network,
}


def build_network(spec: EncoderSpec) -> PooledNetwork:
    """The spec's network with random weights, and its pooling."""
    network, prefix_tokens = _BUILDERS[spec.family](spec)
    return PooledNetwork(network, spec, prefix_tokens)


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


def _shown(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def map_keys(
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    layout: WeightsLayout,
    name: str,
    path: Path,
) -> dict[str, torch.Tensor]:
    """The file's tensors under the network's key names, as the layout says; a file that does
    not fit is refused naming the encoder and the missing, unexpected or misshapen keys."""
    for prefix in layout.prefixes:
        if any(key.startswith(prefix) for key in state):
            state = {
                key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)
            }
            break
    for old, new in layout.renames.items():
        state = {
            (new + key[len(old) :] if key.startswith(old) else key): value
            for key, value in state.items()
        }
    state = {key: value for key, value in state.items() if key not in layout.ignored}
    if layout.by_position:
        if Path(path).suffix == ".safetensors":
            # safetensors gives its tensors back sorted by name, not in the order they were
            # saved: same-shaped tensors (a norm's weight, bias, mean, var) would swap silently.
            raise InputDataError(
                path,
                f"encoder {name} maps its weights by position, which needs the order they were "
                "saved in: give the torch file (.pt, .pth, .bin), not a .safetensors copy",
            )
        if len(state) != len(expected):
            raise InputDataError(
                path,
                f"weights do not fit encoder {name}: {len(state)} tensors, the network has "
                f"{len(expected)} (matched by position)",
            )
        state = dict(zip(expected, state.values(), strict=True))
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    misshapen = [
        f"{key} {tuple(state[key].shape)} for {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or misshapen:
        problems = [
            f"missing {len(missing)} key(s): {_shown(missing)}" if missing else "",
            f"unexpected {len(unexpected)} key(s): {_shown(unexpected)}" if unexpected else "",
            f"{len(misshapen)} shape(s) differ: {_shown(misshapen)}" if misshapen else "",
        ]
        raise InputDataError(
            path,
            f"weights do not fit encoder {name}: " + "; ".join(p for p in problems if p),
        )
    return state


def load_encoder(config: EncoderConfig) -> ImageEncoder:
    spec = config.spec
    identity = encoder_identity(config)
    if not spec.needs_weights:
        return ImageEncoder(StainStatistics(), spec, identity).eval()
    if config.is_random:
        torch.manual_seed(config.seed)
        tower = build_network(spec)
        logger.warning(
            "encoder %s uses RANDOM weights (seed %d): features carry no pretrained knowledge",
            spec.name,
            config.seed,
        )
    else:
        path = weights_path(config)
        state = read_state_dict(path)
        tower = build_network(spec)
        expected = tower.network.state_dict()
        tower.network.load_state_dict(map_keys(state, expected, spec.weights, spec.name, path))
    return ImageEncoder(tower, spec, identity).eval()
