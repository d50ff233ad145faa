"""`hespotex train`: a HESpotEx checkpoint from paired ST + H&E sections.

1. Genes: chosen on the training sections only (``hespotex.genes``); expression is CPM +
   log1p of each spot's counts; spots with fewer than ``min_spot_counts`` counts are left out.
2. Expression stream: the graph attention autoencoder on each section's spatial kNN graph
   (k = 8, self loops), one model trained over the training sections in turn; each section's
   bottleneck, read after its own epochs, is its spots' expression latent.
3. Image stream: features of each spot's patch from the frozen encoder (the pipeline's own
   reader and encoder, so training and inference see the same pixels), then the heads and
   graph decoder, trained with (1 − Pearson(expression latent, image latent)) + MSE, one
   section per step. With a validation section the epoch is the one with the best mean gene
   Pearson on it (the reported score), never chosen on a test section.

A section larger than ``spots_per_step`` trains in spatial blocks (``hespotex.subgraphs``):
each block's loss is backpropagated in turn and the section's step sums them, the same step as
on the whole graph with memory bounded by a block.

Seeds are fixed (weights, dropout, section order). Every ``resume_every`` epochs the state is
written beside the checkpoint (``.resume.pt``, tensors only); rerunning the same command after
an interruption continues from it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hespotex.atomic import atomic_path
from hespotex.checkpoint import CheckpointMeta, EncoderRecord
from hespotex.config import NucleusCounter, PipelineConfig, TrainingConfig
from hespotex.encoders import load_encoder, pick_device
from hespotex.errors import InputDataError
from hespotex.genes import select_genes
from hespotex.graph import knn_edges
from hespotex.model import ExpressionAutoencoder, ImageStream, ImageStreamShape, pearson_rows
from hespotex.runners import TorchRunner
from hespotex.sections import Section, SectionSource, load_section
from hespotex.subgraphs import SpotBlock, spot_blocks

logger = logging.getLogger(__name__)


@dataclass
class EncodedSection:
    """A section with its frozen-encoder features (and nucleus counts when configured)."""

    section: Section
    features: np.ndarray
    nucleus_counts: np.ndarray | None

    @property
    def section_id(self) -> str:
        return self.section.section_id


@dataclass
class SectionTensors:
    section_id: str
    expression: torch.Tensor
    features: torch.Tensor
    decoder_blocks: list[SpotBlock]
    gate_blocks: list[SpotBlock]
    nucleus_counts: torch.Tensor | None
    latent: torch.Tensor | None = None

    def nucleus_counts_of(self, block: SpotBlock) -> torch.Tensor | None:
        return None if self.nucleus_counts is None else self.nucleus_counts[block.nodes]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def load_sections(sources: Sequence[SectionSource], min_spot_counts: int) -> list[Section]:
    """Each section, checked, without spots of fewer than ``min_spot_counts`` counts."""
    sections = []
    for source in sources:
        section = load_section(source)
        totals = np.asarray(section.counts.sum(axis=1)).ravel()
        keep = totals >= min_spot_counts
        if not keep.any():
            raise InputDataError(
                section.image, f"section {section.section_id}: no spot has {min_spot_counts} counts"
            )
        if not keep.all():
            logger.info(
                "%s: left out %d of %d spots with fewer than %d counts",
                section.section_id,
                int((~keep).sum()),
                len(keep),
                min_spot_counts,
            )
        sections.append(section.subset_spots(keep))
        logger.info(
            "%s: %d spots × %d genes, median %d counts per spot",
            section.section_id,
            int(keep.sum()),
            len(section.genes),
            int(np.median(totals[keep])),
        )
    return sections


def encoder_record(runner: TorchRunner, config: PipelineConfig) -> EncoderRecord:
    identity = runner.identity
    return EncoderRecord(
        architecture=identity.architecture,
        weights_sha256=identity.weights_sha256,
        random_weights=identity.is_random,
        feature_dim=identity.feature_dim,
        mean=identity.mean,
        std=identity.std,
        patch_px=config.features.patch_px,
        patch_mpp=config.features.patch_mpp,
    )


def encode_sections(
    sections: Sequence[Section], config: PipelineConfig, runner: TorchRunner
) -> list[EncodedSection]:
    """Read every spot's patch once, as the pipeline's features stage does; encode it, and
    count its nuclei when configured."""
    from hespotex.features import encode_patches
    from hespotex.slide import open_slide

    counter = config.training.nucleus_counter
    encoded = []
    for section in sections:
        with open_slide(section.image, section.section_id, section.mpp) as slide:
            batches = list(
                encode_patches(
                    slide,
                    section.centres_px,
                    runner,
                    config.features,
                    f"encoding {section.section_id}",
                    counter,
                )
            )
        encoded.append(
            EncodedSection(
                section,
                np.concatenate([batch.features for batch in batches]),
                None
                if counter == NucleusCounter.NONE
                else np.concatenate([batch.nucleus_counts for batch in batches]),
            )
        )
    return encoded


def section_blocks(
    coords: np.ndarray, decoder_k: int, gate_k: int, spots_per_step: int, device: torch.device
) -> tuple[list[SpotBlock], list[SpotBlock]]:
    """The section's spatial blocks over the image stream's kNN graph and over the
    autoencoder's (with self loops), each block with the receptive field of its model."""

    def blocks(edge_index: np.ndarray, hops: int) -> list[SpotBlock]:
        return [block.to(device) for block in spot_blocks(coords, edge_index, hops, spots_per_step)]

    return (
        blocks(knn_edges(coords, decoder_k), ImageStream.RECEPTIVE_HOPS),
        blocks(knn_edges(coords, gate_k, self_loops=True), ExpressionAutoencoder.RECEPTIVE_HOPS),
    )


def section_tensors(
    encoded: EncodedSection, genes: list[str], config: PipelineConfig, device: torch.device
) -> SectionTensors:
    decoder_blocks, gate_blocks = section_blocks(
        encoded.section.centres_px,
        config.graph.k,
        config.training.gate_k,
        config.training.spots_per_step,
        device,
    )
    return SectionTensors(
        section_id=encoded.section_id,
        expression=torch.tensor(
            encoded.section.log_expression(genes), dtype=torch.float32, device=device
        ),
        features=torch.tensor(encoded.features, dtype=torch.float32, device=device),
        decoder_blocks=decoder_blocks,
        gate_blocks=gate_blocks,
        nucleus_counts=None
        if encoded.nucleus_counts is None
        else torch.tensor(encoded.nucleus_counts, device=device),
    )


class ResumeFile:
    """The training state between epochs, bound to what it was trained on by a fingerprint;
    tensors and plain values only, so loading it runs no code."""

    def __init__(self, path: Path | None, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            logger.warning("%s is unreadable (%s); starting afresh", self.path, error)
            return None
        if state.get("fingerprint") != self.fingerprint:
            logger.warning(
                "%s belongs to another training (config, sections or genes differ); "
                "starting afresh",
                self.path,
            )
            return None
        logger.info("resuming from %s (%s)", self.path, state["stage"])
        return state

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@torch.no_grad()
def blockwise_rows(
    blocks: Sequence[SpotBlock], rows_of: Callable[[SpotBlock], torch.Tensor]
) -> torch.Tensor:
    """A whole section's output rows, assembled from each block's core rows."""
    parts = [(block.core, rows_of(block)[: block.n_core]) for block in blocks]
    first = parts[0][1]
    rows = first.new_empty((sum(len(index) for index, _ in parts), first.shape[1]))
    for index, values in parts:
        rows[index] = values
    return rows


def autoencoder_block_loss(
    autoencoder: ExpressionAutoencoder, section: SectionTensors, block: SpotBlock
) -> torch.Tensor:
    """The block's share of the section's reconstruction MSE (its core's squared errors over
    the section's size), so the shares sum to the section's MSE."""
    expression = section.expression[block.nodes]
    _, reconstruction = autoencoder(expression, block.edge_index)
    errors = reconstruction[: block.n_core] - expression[: block.n_core]
    return errors.square().sum() / section.expression.numel()


def accumulate_autoencoder_gradients(
    autoencoder: ExpressionAutoencoder, section: SectionTensors
) -> float:
    """Add the section's reconstruction-MSE gradient to the parameters' ``grad``, block by
    block (one block's graph alive at a time); the section's MSE."""
    mse = 0.0
    for block in section.gate_blocks:
        loss = autoencoder_block_loss(autoencoder, section, block)
        loss.backward()
        mse += loss.item()
    return mse


def autoencoder_latent(
    autoencoder: ExpressionAutoencoder, section: SectionTensors, block: SpotBlock
) -> torch.Tensor:
    return autoencoder(section.expression[block.nodes], block.edge_index)[0]


def train_expression_latents(
    sections: Sequence[SectionTensors], n_genes: int, config: TrainingConfig
) -> None:
    """Train one autoencoder over the sections in turn; read each section's latent after its
    own epochs (as the authors do)."""
    device = sections[0].expression.device
    autoencoder = ExpressionAutoencoder(n_genes, config.gate_hidden, config.latent_dim).to(device)
    optimiser = torch.optim.Adam(
        autoencoder.parameters(), lr=config.gate_lr, weight_decay=config.gate_weight_decay
    )
    for section in sections:
        autoencoder.train()
        progress = tqdm(
            range(config.gate_epochs), desc=f"autoencoder {section.section_id}", mininterval=5
        )
        for _ in progress:
            optimiser.zero_grad()
            mse = accumulate_autoencoder_gradients(autoencoder, section)
            torch.nn.utils.clip_grad_norm_(autoencoder.parameters(), config.gradient_clip)
            optimiser.step()
            progress.set_postfix(mse=f"{mse:.4f}", refresh=False)
        autoencoder.eval()
        section.latent = blockwise_rows(
            section.gate_blocks, functools.partial(autoencoder_latent, autoencoder, section)
        )
        logger.info("autoencoder on %s: reconstruction MSE %.4f", section.section_id, mse)


def image_stream_outputs(
    model: ImageStream, section: SectionTensors, block: SpotBlock
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's predicted expression and image latents."""
    nodes = block.nodes
    return model(section.features[nodes], block.edge_index, section.nucleus_counts_of(block))


def image_stream_block_losses(
    model: ImageStream, section: SectionTensors, block: SpotBlock
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's shares of the section's alignment loss (1 − Pearson of the latents, mean
    over spots) and prediction MSE: its core's terms over the section's size."""
    prediction, latent = image_stream_outputs(model, section, block)
    core = block.core
    n_core = block.n_core
    alignment = (1 - pearson_rows(section.latent[core], latent[:n_core])).sum()
    errors = prediction[:n_core] - section.expression[core]
    return (
        alignment / len(section.expression),
        errors.square().sum() / section.expression.numel(),
    )


def accumulate_image_stream_gradients(
    model: ImageStream, section: SectionTensors
) -> tuple[float, float]:
    """Add the section's loss gradient to the parameters' ``grad``, block by block; the
    section's alignment loss and MSE."""
    alignment = mse = 0.0
    for block in section.decoder_blocks:
        block_alignment, block_mse = image_stream_block_losses(model, section, block)
        (block_alignment + block_mse).backward()
        alignment += block_alignment.item()
        mse += block_mse.item()
    return alignment, mse


def image_stream_prediction(
    model: ImageStream, section: SectionTensors, block: SpotBlock
) -> torch.Tensor:
    return image_stream_outputs(model, section, block)[0]


def image_stream_epoch(
    model: ImageStream, optimiser: torch.optim.Optimizer, training: Sequence[SectionTensors]
) -> dict[str, float]:
    """One step per section; the losses reported are the last section's."""
    model.train()
    for section in training:
        optimiser.zero_grad()
        alignment, mse = accumulate_image_stream_gradients(model, section)
        optimiser.step()
    return {"loss": alignment + mse, "alignment": alignment, "mse": mse}


def validation_pearson(model: ImageStream, section: SectionTensors) -> float:
    """Mean over genes of the Pearson correlation of predicted and measured expression across
    the section's spots: the score reported on test sections, so the epoch chosen is the one
    that serves it."""
    model.eval()
    prediction = blockwise_rows(
        section.decoder_blocks, functools.partial(image_stream_prediction, model, section)
    )
    return pearson_rows(prediction.T, section.expression.T).mean().item()


@dataclass
class EarlyStopping:
    """The best epoch on the validation section so far, and how long ago it was."""

    patience: int
    best_state: dict | None = None
    best_score: float = -float("inf")
    best_epoch: int = 0
    stale: int = 0

    def update(self, model: ImageStream, epoch: int, score: float) -> bool:
        """Record the epoch's validation score; True when training should stop."""
        if score > self.best_score:
            self.best_state = copy.deepcopy(model.state_dict())
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            return False
        self.stale += 1
        return self.stale >= self.patience


def train_image_stream(
    training: Sequence[SectionTensors],
    validation: SectionTensors | None,
    n_genes: int,
    config: TrainingConfig,
    resume: ResumeFile,
    saved: dict | None,
) -> tuple[ImageStream, dict]:
    device = training[0].features.device
    shape = ImageStreamShape(
        feature_dim=training[0].features.shape[1],
        latent_dim=config.latent_dim,
        n_genes=n_genes,
        dropout=config.dropout,
        feature_dropout=config.feature_dropout,
    )
    model = ImageStream(shape).to(device)
    model.standardise_with(torch.cat([section.features for section in training]))
    model.start_from_mean(torch.cat([section.expression for section in training]))
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    stopping = EarlyStopping(config.patience)
    first_epoch = 1
    if saved is not None and saved["stage"] == "image_stream":
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        stopping = EarlyStopping(**saved["stopping"])
        torch.set_rng_state(saved["rng"])
        first_epoch = saved["epoch"] + 1
    progress = tqdm(
        range(first_epoch, config.epochs + 1),
        desc="image stream",
        mininterval=5,
        initial=first_epoch - 1,
        total=config.epochs,
    )
    epoch, losses = first_epoch - 1, {}
    for epoch in progress:
        losses = image_stream_epoch(model, optimiser, training)
        stop = False
        if validation is not None:
            losses["validation_pearson"] = validation_pearson(model, validation)
            stop = stopping.update(model, epoch, losses["validation_pearson"])
        progress.set_postfix({key: f"{value:.4f}" for key, value in losses.items()}, refresh=False)
        if stop:
            logger.info(
                "early stop at epoch %d: no better validation Pearson for %d epochs",
                epoch,
                config.patience,
            )
            break
        if epoch % config.resume_every == 0:
            resume.save(
                {
                    "stage": "image_stream",
                    "latents": {section.section_id: section.latent.cpu() for section in training},
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "stopping": vars(stopping),
                    "rng": torch.get_rng_state(),
                    "epoch": epoch,
                }
            )
    if stopping.best_state is not None:
        model.load_state_dict(stopping.best_state)
        logger.info(
            "kept epoch %d (validation mean Pearson %.4f)",
            stopping.best_epoch,
            stopping.best_score,
        )
    summary = {
        "epochs_run": epoch,
        "chosen_epoch": stopping.best_epoch if validation is not None else epoch,
        "validation_pearson": stopping.best_score if validation is not None else None,
        "final_training_loss": losses.get("loss"),
    }
    return model.eval(), summary


def fingerprint(config: PipelineConfig, genes: list[str], sections: Sequence[EncodedSection]):
    digest = hashlib.sha256()
    digest.update(config.model_dump_json(include={"training", "graph", "encoder"}).encode())
    digest.update(json.dumps(genes).encode())
    for encoded in sections:
        digest.update(encoded.section_id.encode())
        digest.update(np.ascontiguousarray(encoded.features).tobytes())
    return digest.hexdigest()


def fit(
    sections: Sequence[EncodedSection],
    validation_id: str | None,
    config: PipelineConfig,
    record: EncoderRecord,
    resume_path: Path | None = None,
    genes: list[str] | None = None,
) -> tuple[ImageStream, CheckpointMeta]:
    """Train on already encoded sections; unless given, genes are chosen on the training
    sections only, among those the validation section has."""
    seed_everything(config.training.seed)
    validation = next((s for s in sections if s.section_id == validation_id), None)
    if validation_id is not None and validation is None:
        raise InputDataError(validation_id, "the validation section is not in the sheet")
    training = [encoded for encoded in sections if encoded is not validation]
    if not training:
        raise InputDataError(validation_id, "no section is left to train on")
    if genes is None:
        genes = select_genes(
            [encoded.section for encoded in training],
            config.training,
            [validation.section.genes] if validation else [],
        )
    device = pick_device(config.features.device)
    tensors = [section_tensors(encoded, genes, config, device) for encoded in training]
    validation_tensors = (
        section_tensors(validation, genes, config, device) if validation is not None else None
    )
    resume = ResumeFile(resume_path, fingerprint(config, genes, sections))
    saved = resume.load()
    if saved is None:
        train_expression_latents(tensors, len(genes), config.training)
        latents = {section.section_id: section.latent.cpu() for section in tensors}
        resume.save({"stage": "latents", "latents": latents, "rng": torch.get_rng_state()})
    else:
        for section in tensors:
            section.latent = saved["latents"][section.section_id].to(device)
        torch.set_rng_state(saved["rng"])
    model, summary = train_image_stream(
        tensors, validation_tensors, len(genes), config.training, resume, saved
    )
    resume.remove()
    meta = CheckpointMeta(
        genes=genes,
        latent_dim=config.training.latent_dim,
        dropout=config.training.dropout,
        graph_k=config.graph.k,
        encoder=record,
        trained_on=[encoded.section_id for encoded in training],
        nucleus_counter=config.training.nucleus_counter.value,
        training={
            **summary,
            "validation_section": validation_id,
            **config.training.model_dump(mode="json"),
        },
    )
    return model.cpu(), meta


def train(
    sources: Sequence[SectionSource],
    validation_id: str | None,
    config: PipelineConfig,
    resume_path: Path | None = None,
) -> tuple[ImageStream, CheckpointMeta]:
    seed_everything(config.training.seed)
    sections = load_sections(sources, config.training.min_spot_counts)
    runner = TorchRunner(load_encoder(config.encoder), pick_device(config.features.device))
    logger.info("encoder: %s", runner.identity.describe())
    encoded = encode_sections(sections, config, runner)
    return fit(encoded, validation_id, config, encoder_record(runner, config), resume_path)
