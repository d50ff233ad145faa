"""HESpotEx checkpoints: one safetensors file, weights plus the metadata needed to use them.

safetensors holds tensors and a string header only, so loading a checkpoint can never run
code. The header carries the gene list, shapes, the identity of the encoder that made the training
features and their patch geometry, the graph k and the expression normalisation; decoding
features of any other encoder is refused. A checkpoint trained on stain-normalised patches also
carries the normalisation (method and the target's stain statistics, ``StainSetting``): the
target of ``stain.target: checkpoint``, and what its features must have been made with. It
also carries the linear probe fitted on the same training spots (tensors ``probe.*``), and how
far each gene can be trusted, for each model it can serve (HESpotEx, the probe, their mean):
per-gene Pearson on the validation section (``validation_pearson``, ``probe_validation_pearson``,
``ensemble_validation_pearson``) and, when given, on the held-out sections of ``hespotex
crossval`` (``cv_pearson``, ``probe_cv_pearson``, ``ensemble_cv_pearson``). What decode serves
per gene follows from them (``served_models``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from hespotex import __version__
from hespotex.config import LibrarySize, ServedModel
from hespotex.encoder.identity import EncoderIdentity, check_same_encoder
from hespotex.encoder.stain import StainSetting, check_same_stain
from hespotex.errors import CheckpointError, ConfigError
from hespotex.io.atomic import atomic_path

if TYPE_CHECKING:
    from hespotex.network.probe import LinearProbe
    from hespotex.network.streams import ImageStream, ImageStreamShape

logger = logging.getLogger(__name__)

METADATA_KEY = "hespotex"
# 2: the encoder as an EncoderIdentity, the patch geometry beside it. 3: the identity from the
# encoder's spec; library size; per-gene scores; the authors' nucleus factor. 4: the linear
# probe, scores per served model, the gene sets, the image stream's input components and path.
FORMAT_VERSION = 4
PROBE_PREFIX = "probe."
# The models a checkpoint serves, and where their per-gene scores come from, most trusted first.
SERVABLE = (ServedModel.HESPOTEX, ServedModel.PROBE, ServedModel.ENSEMBLE)
HELD_OUT = ("cv_pearson", "validation_pearson")


def score_name(model: ServedModel, held_out: str) -> str:
    """HESpotEx's scores keep their names of format 3; the others are prefixed."""
    return held_out if model is ServedModel.HESPOTEX else f"{model.value}_{held_out}"


GENE_SCORES = tuple(score_name(model, where) for where in HELD_OUT for model in SERVABLE)


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
    library_size: LibrarySize = LibrarySize.ALL_GENES
    nucleus_counter: str = "none"
    # Absent from checkpoints trained before stain normalisation: they were trained without.
    stain: StainSetting = StainSetting()
    trained_on: list[str]
    hespotex_version: str = __version__
    training: dict[str, Any] = {}
    gene_scores: dict[str, list[float | None]] = {}
    gene_score_sources: dict[str, str] = {}
    # Named subsets of ``genes`` scored apart (training.genes.gene_sets).
    gene_sets: dict[str, list[str]] = {}
    feature_components: int = 0
    linear_path: bool = False
    probe_components: int

    @model_validator(mode="after")
    def _scores_fit_the_genes(self) -> CheckpointMeta:
        for name, scores in self.gene_scores.items():
            if name not in GENE_SCORES:
                raise ValueError(f"unknown gene score {name}; known: {', '.join(GENE_SCORES)}")
            if len(scores) != len(self.genes):
                raise ValueError(f"{name} has {len(scores)} values for {len(self.genes)} genes")
        return self

    @model_validator(mode="after")
    def _sets_are_genes(self) -> CheckpointMeta:
        for name, members in self.gene_sets.items():
            strangers = sorted(set(members) - set(self.genes))
            if strangers:
                raise ValueError(f"gene set {name} names genes not predicted: {strangers[:5]}")
        return self

    def trusted_score(self) -> str | None:
        """Where the scores ``best`` and ``outputs.min_gene_pearson`` read come from:
        held-out sections' if present, else the validation section's."""
        return next((name for name in HELD_OUT if name in self.gene_scores), None)

    def served_models(self, serve: ServedModel, checkpoint: Path | str) -> list[ServedModel]:
        """Per gene, the model decode serves: the one named, or (``best``) the one of the
        three with the highest trusted score (HESpotEx for a gene none of them scored, and for
        every gene of a checkpoint without scores)."""
        if serve is not ServedModel.BEST:
            return [serve] * len(self.genes)
        where = self.trusted_score()
        if where is None:
            logger.warning(
                "decode.serve: best, but checkpoint %s carries no per-gene scores (train it "
                "with --validation): HESpotEx is served for every gene",
                checkpoint,
            )
            return [ServedModel.HESPOTEX] * len(self.genes)
        candidates = [
            (model, self.gene_scores[score_name(model, where)])
            for model in SERVABLE
            if score_name(model, where) in self.gene_scores
        ]
        served = []
        for index in range(len(self.genes)):
            scored = [(values[index], model) for model, values in candidates]
            scored = [(value, model) for value, model in scored if value is not None]
            served.append(max(scored, key=lambda pair: pair[0])[1] if scored else SERVABLE[0])
        return served

    def served_scores(self, served: list[ServedModel]) -> list[float | None]:
        """Each gene's trusted score for the model served for it (None: not scored)."""
        where = self.trusted_score()
        if where is None:
            return [None] * len(self.genes)
        return [
            self.gene_scores.get(score_name(model, where), [None] * len(self.genes))[index]
            for index, model in enumerate(served)
        ]

    def genes_kept(
        self, min_pearson: float | None, serve: ServedModel, checkpoint: Path | str
    ) -> list[str]:
        """The genes whose served model's trusted score reaches ``min_pearson`` (all genes
        without one); a gene without a score is dropped."""
        if min_pearson is None:
            return list(self.genes)
        score = self.trusted_score()
        if score is None:
            raise ConfigError(
                f"outputs.min_gene_pearson is set but checkpoint {checkpoint} carries no "
                "per-gene scores: train it again with --validation (or --gene-scores)"
            )
        values = self.served_scores(self.served_models(serve, checkpoint))
        kept = [
            gene
            for gene, value in zip(self.genes, values, strict=True)
            if value is not None and value >= min_pearson
        ]
        if not kept:
            best = max((value for value in values if value is not None), default=None)
            raise ConfigError(
                f"outputs.min_gene_pearson {min_pearson} leaves no gene of checkpoint "
                f"{checkpoint} (its best {score} of the served models is {best})"
            )
        return kept

    @property
    def shape(self) -> ImageStreamShape:
        from hespotex.network.streams import ImageStreamShape

        return ImageStreamShape(
            feature_dim=self.encoder.feature_dim,
            latent_dim=self.latent_dim,
            n_genes=len(self.genes),
            dropout=self.dropout,
            input_components=self.feature_components,
            linear_path=self.linear_path,
        )


class Checkpoint(NamedTuple):
    model: ImageStream
    probe: LinearProbe
    meta: CheckpointMeta


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    from safetensors.torch import save_file

    model, probe, meta = checkpoint
    state = {
        **model.state_dict(),
        **{PROBE_PREFIX + name: tensor for name, tensor in probe.state_dict().items()},
    }
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
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


def load_checkpoint(path: Path) -> Checkpoint:
    import torch
    from safetensors.torch import load_file

    from hespotex.network.probe import LinearProbe
    from hespotex.network.streams import ImageStream

    meta = read_checkpoint_meta(path)
    # Built without memory and filled with the file's tensors themselves: a second copy of
    # the weights (1.4 GB with 5,457 genes) is never made, nor initialised for nothing.
    with torch.device("meta"):
        model = ImageStream(meta.shape)
        probe = LinearProbe(meta.encoder.feature_dim, meta.probe_components, len(meta.genes))
    tensors = load_file(str(path))
    probe_state = {
        name.removeprefix(PROBE_PREFIX): tensors.pop(name)
        for name in list(tensors)
        if name.startswith(PROBE_PREFIX)
    }
    try:
        model.load_state_dict(tensors, assign=True)
        probe.load_state_dict(probe_state, assign=True)
    except RuntimeError as error:
        raise CheckpointError(path, f"weights do not match the metadata: {error}") from None
    return Checkpoint(model.eval(), probe.eval(), meta)


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
