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

Seeds are fixed (weights, dropout, section order). Every ``resume_every`` epochs the state is
written beside the checkpoint (``.resume.pt``, tensors only); rerunning the same command after
an interruption continues from it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional
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
    decoder_edges: torch.Tensor
    gate_edges: torch.Tensor
    nucleus_counts: torch.Tensor | None
    latent: torch.Tensor | None = None


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
    """Read every spot's patch once; encode it, and count its nuclei when configured."""
    from hespotex.nuclei import count_nuclei
    from hespotex.patches import iter_patch_batches
    from hespotex.slide import check_patch_geometry, open_slide

    features_config = config.features
    with_nuclei = config.training.nucleus_counter != NucleusCounter.NONE
    encoded = []
    for section in sections:
        with open_slide(section.image, section.section_id, section.mpp) as slide:
            check_patch_geometry(
                slide,
                features_config.patch_um,
                features_config.patch_mpp,
                features_config.max_upsampling,
            )
            plan = slide.plan(features_config.patch_um, features_config.patch_mpp)
            features, nuclei = [], []
            batches = iter_patch_batches(
                slide,
                section.centres_px,
                plan,
                features_config.batch_size,
                features_config.num_workers,
                features_config.max_region_px,
            )
            for patches in tqdm(batches, desc=f"encoding {section.section_id}", mininterval=5):
                features.append(runner(patches, slide.path))
                if with_nuclei:
                    nuclei.append(count_nuclei(patches, features_config.patch_mpp))
        encoded.append(
            EncodedSection(
                section,
                np.concatenate(features),
                np.concatenate(nuclei) if with_nuclei else None,
            )
        )
    return encoded


def section_tensors(
    encoded: EncodedSection, genes: list[str], config: PipelineConfig, device: torch.device
) -> SectionTensors:
    coords = encoded.section.centres_px
    return SectionTensors(
        section_id=encoded.section_id,
        expression=torch.tensor(
            encoded.section.log_expression(genes), dtype=torch.float32, device=device
        ),
        features=torch.tensor(encoded.features, dtype=torch.float32, device=device),
        decoder_edges=torch.from_numpy(knn_edges(coords, config.graph.k)).to(device),
        gate_edges=torch.from_numpy(knn_edges(coords, config.training.gate_k, self_loops=True)).to(
            device
        ),
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
            _, reconstruction = autoencoder(section.expression, section.gate_edges)
            loss = functional.mse_loss(reconstruction, section.expression)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(autoencoder.parameters(), config.gradient_clip)
            optimiser.step()
            progress.set_postfix(mse=f"{loss.item():.4f}", refresh=False)
        autoencoder.eval()
        with torch.no_grad():
            section.latent, _ = autoencoder(section.expression, section.gate_edges)
        logger.info("autoencoder on %s: reconstruction MSE %.4f", section.section_id, loss.item())


def image_stream_loss(
    model: ImageStream, section: SectionTensors
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prediction, latent = model(section.features, section.decoder_edges, section.nucleus_counts)
    alignment = 1 - pearson_rows(section.latent, latent).mean()
    mse = functional.mse_loss(prediction, section.expression)
    return alignment + mse, alignment, mse


def image_stream_epoch(
    model: ImageStream, optimiser: torch.optim.Optimizer, training: Sequence[SectionTensors]
) -> dict[str, float]:
    model.train()
    for section in training:
        optimiser.zero_grad()
        loss, alignment, mse = image_stream_loss(model, section)
        loss.backward()
        optimiser.step()
    return {"loss": loss.item(), "alignment": alignment.item(), "mse": mse.item()}


def validation_pearson(model: ImageStream, section: SectionTensors) -> float:
    """Mean over genes of the Pearson correlation of predicted and measured expression across
    the section's spots: the score reported on test sections, so the epoch chosen is the one
    that serves it."""
    model.eval()
    with torch.no_grad():
        prediction, _ = model(section.features, section.decoder_edges, section.nucleus_counts)
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
