"""Which encoder made a set of features: one record, written and read the same way everywhere.

A feature store (Zarr attribute ``encoder``), an exported ONNX model (metadata
``hespotex_encoder``) and a checkpoint (metadata ``encoder``) each carry an
``EncoderIdentity`` as the same JSON object. A checkpoint decodes, and an ONNX model
replaces, only the encoder with the same architecture and weights, which
``check_same_encoder`` enforces with an error naming both.

The identity is worked out from the config alone (the weights file is hashed, nothing is
built), so the Snakefile can check a run before any job starts without importing torch.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from hespotex.config import RANDOM_WEIGHTS, EncoderArchitecture, EncoderConfig
from hespotex.errors import ConfigError, EncoderMismatchError, InputDataError
from hespotex.io.checksum import cached_sha256

NO_WEIGHTS = "none"
WEIGHTS_FREE = "weights-free"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_EMBED_DIM = 512
STAIN_STATS_DIM = 64

# Feature dimension and input normalisation of each architecture.
ARCHITECTURE_OUTPUTS: dict[EncoderArchitecture, tuple[int, tuple, tuple]] = {
    EncoderArchitecture.VIT_B_32: (CLIP_EMBED_DIM, CLIP_MEAN, CLIP_STD),
    EncoderArchitecture.VIT_TINY_32: (CLIP_EMBED_DIM, CLIP_MEAN, CLIP_STD),
    EncoderArchitecture.STAIN_STATS: (STAIN_STATS_DIM, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


class EncoderIdentity(BaseModel):
    """The encoder behind a set of features: architecture, weights (a path, ``random`` or
    ``none``) and their checksum (sha256, ``random-seed-N`` or ``weights-free``), the
    feature dimension and the input normalisation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str
    weights: str
    weights_sha256: str
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def is_random(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    def describe(self) -> str:
        if self.is_random:
            return (
                f"{self.architecture} with RANDOM weights ({self.weights_sha256}): "
                "no pretrained histology knowledge, for demos and tests only"
            )
        if self.weights == NO_WEIGHTS:
            return f"{self.architecture} (no weights)"
        return f"{self.architecture} with weights {self.weights} (sha256 {self.weights_sha256})"

    def same_features_as(self, other: EncoderIdentity) -> bool:
        return (self.architecture, self.weights_sha256) == (
            other.architecture,
            other.weights_sha256,
        )

    @classmethod
    def from_record(cls, record: object, source: Path | str) -> EncoderIdentity:
        """Read an identity as stored; a record of another shape (an older hespotex) is an
        error naming ``source``."""
        try:
            return cls.model_validate(record)
        except ValidationError as error:
            raise InputDataError(
                source,
                f"no encoder identity this hespotex can read ({error.error_count()} problem(s), "
                f"e.g. {error.errors()[0]['msg']}); it was written by another version: "
                "write it again",
            ) from None


def weights_checksum(config: EncoderConfig) -> str:
    if not config.architecture.needs_weights:
        return WEIGHTS_FREE
    if config.is_random:
        return f"random-seed-{config.seed}"
    weights = Path(config.weights)
    if not weights.is_file():
        raise ConfigError(f"encoder.weights: {weights} does not exist")
    return cached_sha256(weights)


def encoder_identity(config: EncoderConfig) -> EncoderIdentity:
    """The identity of the encoder ``config`` describes, without building it."""
    feature_dim, mean, std = ARCHITECTURE_OUTPUTS[config.architecture]
    if not config.architecture.needs_weights:
        weights = NO_WEIGHTS
    elif config.is_random:
        weights = RANDOM_WEIGHTS
    else:
        weights = str(config.weights)
    return EncoderIdentity(
        architecture=config.architecture.value,
        weights=weights,
        weights_sha256=weights_checksum(config),
        feature_dim=feature_dim,
        mean=mean,
        std=std,
    )


def check_same_encoder(
    path: Path | str, made_with: EncoderIdentity, other: str, other_uses: EncoderIdentity, fix: str
) -> None:
    """``path`` (a checkpoint, ONNX model or feature store) was made with ``made_with``;
    ``other`` (the config, a feature store) uses ``other_uses``: they must be the same
    encoder with the same weights."""
    if not made_with.same_features_as(other_uses):
        raise EncoderMismatchError(
            path,
            f"made with encoder {made_with.architecture} (weights {made_with.weights_sha256}), "
            f"but {other} uses {other_uses.architecture} (weights {other_uses.weights_sha256}); "
            f"{fix}",
        )
