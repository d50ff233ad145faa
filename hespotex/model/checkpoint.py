"""HESpotEx checkpoints: one safetensors file, weights plus the metadata needed to use them.

safetensors holds tensors and a string header only, so loading a checkpoint can never run
code. The header carries the gene list, shapes, the identity of the encoder that made the training
features and their patch geometry, the graph k and the expression normalisation; decoding
features of any other encoder is refused. A checkpoint trained on stain-normalised patches also
carries the normalisation (method and the target's stain statistics, ``StainSetting``): the
target of ``stain.target: checkpoint``, and what its features must have been made with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from hespotex import __version__
from hespotex.errors import CheckpointError
from hespotex.io.atomic import atomic_path
from hespotex.model.identity import EncoderIdentity, check_same_encoder
from hespotex.model.stain import StainSetting, check_same_stain

if TYPE_CHECKING:
    from hespotex.model.streams import ImageStream, ImageStreamShape

METADATA_KEY = "hespotex"
# 2: the encoder as an EncoderIdentity, the patch geometry beside it.
FORMAT_VERSION = 2


class CheckpointMeta(BaseModel):
    """``genes`` are ordered most variable first (seurat_v3 on the training sections), so
    the first N are the top-N highly variable genes of evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    genes: list[str]
    latent_dim: int
    dropout: float
    graph_k: int
    encoder: EncoderIdentity
    patch_px: int
    patch_mpp: float
    normalisation: str = "cpm_log1p"
    target_sum: float = 1e6
    nucleus_counter: str = "none"
    # Absent from checkpoints trained before stain normalisation: they were trained without.
    stain: StainSetting = StainSetting()
    trained_on: list[str]
    hespotex_version: str = __version__
    training: dict[str, Any] = {}

    @property
    def shape(self) -> ImageStreamShape:
        from hespotex.model.streams import ImageStreamShape

        return ImageStreamShape(
            feature_dim=self.encoder.feature_dim,
            latent_dim=self.latent_dim,
            n_genes=len(self.genes),
            dropout=self.dropout,
        )


def save_checkpoint(path: Path, model: ImageStream, meta: CheckpointMeta) -> None:
    from safetensors.torch import save_file

    tensors = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: meta.model_dump_json()})


def read_checkpoint_meta(path: Path) -> CheckpointMeta:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "the checkpoint file does not exist")
    try:
        # The numpy view reads the header without importing torch: the Snakefile calls this at
        # parse time, in every SLURM job too.
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own and OS errors on bad files
        raise CheckpointError(path, f"not a safetensors checkpoint: {error}") from None
    if METADATA_KEY not in header:
        raise CheckpointError(path, "a safetensors file, but not a HESpotEx checkpoint")
    try:
        record = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"the checkpoint metadata is not JSON: {error}") from None
    version = record.get("format_version") if isinstance(record, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"checkpoint format {version}, this HESpotEx reads {FORMAT_VERSION}: train it again "
            "with `hespotex train`",
        )
    try:
        meta = CheckpointMeta.model_validate(record)
    except ValidationError as error:
        raise CheckpointError(path, f"the checkpoint metadata is invalid: {error}") from None
    return meta


def load_checkpoint(path: Path) -> tuple[ImageStream, CheckpointMeta]:
    import torch
    from safetensors.torch import load_file

    from hespotex.model.streams import ImageStream

    meta = read_checkpoint_meta(path)
    # Built without memory and filled with the file's tensors themselves: a second copy of
    # the weights (1.4 GB with 5,457 genes) is never made, nor initialised for nothing.
    with torch.device("meta"):
        model = ImageStream(meta.shape)
    try:
        model.load_state_dict(load_file(str(path)), assign=True)
    except RuntimeError as error:
        raise CheckpointError(path, f"weights do not match the metadata: {error}") from None
    return model.eval(), meta


def check_checkpoint_encoder(
    checkpoint: Path, meta: CheckpointMeta, other: str, other_uses: EncoderIdentity
) -> None:
    """Features decoded by a checkpoint must come from the encoder it was trained on."""
    check_same_encoder(
        checkpoint,
        meta.encoder,
        other,
        other_uses,
        "use the encoder the checkpoint was trained with",
    )


def check_checkpoint_stain(
    checkpoint: Path, meta: CheckpointMeta, other: str, other_uses: StainSetting
) -> None:
    """Features decoded by a checkpoint must be normalised as its training features were."""
    setting = f"stain.normalisation: {meta.stain.method.value}"
    if meta.stain.target is not None:
        setting += " and stain.target: checkpoint"
    check_same_stain(
        checkpoint,
        meta.stain,
        other,
        other_uses,
        f"make the features again with {setting} (snakemake --forcerun features)",
    )
