"""`hespotex train`: a HESpotEx checkpoint from paired ST + H&E sections.

1. Genes: chosen on the training sections only (``hespotex.training.genes``); expression is
   CPM + log1p of each spot's counts; spots with fewer than ``min_spot_counts`` are left out.
2. Expression stream: the graph attention autoencoder on each section's spatial kNN graph
   (k = 8, self loops), one model trained over the training sections in turn; each section's
   bottleneck, read after its own epochs, is its spots' expression latent.
3. Image stream: features of each spot's patch from the frozen encoder (the pipeline's own
   reader, stain normalisation and encoder, so training and inference see the same pixels;
   the checkpoint records the normalisation and its target), then the heads and
   graph decoder, trained with (1 − Pearson(expression latent, image latent)) + MSE, one
   section per step. With a validation section the epoch is the one with the best mean gene
   Pearson on it (the reported score), never chosen on a test section.
4. The linear probe (``hespotex.network.probe``) on the same training spots, its ridge strength
   chosen on the same validation section; the checkpoint carries it, and per gene the
   validation Pearson of HESpotEx, the probe and their mean, from which decode serves
   (``decode.serve``). With ``training.feature_components`` / ``linear_path`` the image stream
   reads the probe's components and starts from its solution.

Loading and encoding sections: ``training.data``; the loops: ``training.loops``; resume state:
``training.resume``; early stopping: ``training.stopping``. Seeds are fixed (weights,
dropout, section order).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hespotex.config import PipelineConfig, TrainingConfig
from hespotex.encoder.build import load_encoder
from hespotex.encoder.devices import pick_device
from hespotex.encoder.identity import EncoderIdentity
from hespotex.encoder.runners import TorchRunner
from hespotex.encoder.stain import StainSetting
from hespotex.errors import InputDataError
from hespotex.io.sections import SectionSource
from hespotex.metrics import pearson_per_gene
from hespotex.network.checkpoint import Checkpoint, CheckpointMeta, score_name
from hespotex.network.probe import LinearProbe, fit_probe
from hespotex.network.serving import model_predictions
from hespotex.network.streams import ImageStream, ImageStreamShape
from hespotex.training.data import (
    EncodedSection,
    SectionTensors,
    encode_sections,
    load_sections,
    section_tensors,
    training_stain,
)
from hespotex.training.genes import gene_sets, select_genes
from hespotex.training.loops import (
    image_stream_epoch,
    section_prediction,
    train_expression_latents,
    validation_pearson,
)
from hespotex.training.resume import ResumeFile, fingerprint
from hespotex.training.stopping import EarlyStopping

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


class WeightAverage:
    """An exponential moving average of a model's weights over epochs (Polyak averaging):
    on sections of a few hundred spots the weights of one epoch are noisy, and which epoch
    the validation section picks with them. ``decay`` 0 keeps the last epoch's weights."""

    def __init__(self, model: ImageStream, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model) if decay > 0 else model

    @torch.no_grad()
    def update(self, model: ImageStream) -> None:
        if self.model is model:
            return
        for averaged, current in zip(self.model.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current, 1 - self.decay)


def train_image_stream(
    training: Sequence[SectionTensors],
    validation: SectionTensors | None,
    n_genes: int,
    config: TrainingConfig,
    resume: ResumeFile,
    saved: dict | None,
    probe: LinearProbe,
) -> tuple[ImageStream, dict]:
    device = training[0].features.device
    shape = ImageStreamShape(
        feature_dim=training[0].features.shape[1],
        latent_dim=config.latent_dim,
        n_genes=n_genes,
        dropout=config.dropout,
        feature_dropout=config.feature_dropout,
        input_components=min(config.feature_components, probe.n_components),
        linear_path=config.linear_path,
    )
    model = ImageStream(shape).to(device)
    model.standardise_with(torch.cat([section.features for section in training]))
    model.start_from_mean(torch.cat([section.expression for section in training]))
    if shape.input_components or shape.linear_path:
        model.start_from_probe(probe.to(device))
    average = WeightAverage(model, config.weight_average)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    stopping = EarlyStopping(config.patience)
    first_epoch = 1
    if saved is not None and saved["stage"] == "image_stream":
        model.load_state_dict(saved["model"])
        average.model.load_state_dict(saved["average"])
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
        average.update(model)
        stop = False
        if validation is not None:
            losses["validation_pearson"] = validation_pearson(average.model, validation)
            stop = stopping.update(average.model, epoch, losses["validation_pearson"])
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
                    "average": average.model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "stopping": vars(stopping),
                    "rng": torch.get_rng_state(),
                    "epoch": epoch,
                }
            )
    model = average.model
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


def rounded_scores(measured: np.ndarray, predicted: np.ndarray) -> list[float | None]:
    """Per gene, Pearson across spots to 4 decimals (None where either side is constant)."""
    scores = pearson_per_gene(measured, predicted)
    return [None if np.isnan(value) else round(float(value), 4) for value in scores]


def validation_scores(
    model: ImageStream, probe: LinearProbe, section: SectionTensors, validation_id: str, epoch: int
) -> tuple[dict[str, list[float | None]], dict[str, str]]:
    """Per gene, the validation section's Pearson of each servable model."""
    with torch.no_grad():
        hespotex = section_prediction(model, section).cpu().numpy()
        linear = probe(section.features).cpu().numpy()
    measured = section.expression.cpu().numpy()
    scores, sources = {}, {}
    for model_name, predicted in model_predictions(hespotex, linear).items():
        name = score_name(model_name, "validation_pearson")
        scores[name] = rounded_scores(measured, predicted)
        sources[name] = (
            f"{model_name.value}: Pearson across the spots of validation section "
            f"{validation_id}, which chose HESpotEx's epoch ({epoch}) and the probe's ridge "
            "strength (optimistic)"
        )
    return scores, sources


def fit(
    sections: Sequence[EncodedSection],
    validation_id: str | None,
    config: PipelineConfig,
    encoder: EncoderIdentity,
    resume_path: Path | None = None,
    genes: list[str] | None = None,
    stain: StainSetting | None = None,
) -> Checkpoint:
    """Train on already encoded sections (stain normalised with ``stain``, recorded in the
    checkpoint); unless given, genes are chosen on the training sections only, among those
    the validation section has."""
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
    probe = fit_probe(
        [section.features.cpu().numpy() for section in tensors],
        [section.expression.cpu().numpy() for section in tensors],
        None
        if validation_tensors is None
        else (
            validation_tensors.features.cpu().numpy(),
            validation_tensors.expression.cpu().numpy(),
        ),
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
        tensors, validation_tensors, len(genes), config.training, resume, saved, probe
    )
    resume.remove()
    probe = probe.cpu()
    scores, sources = {}, {}
    if validation_tensors is not None:
        scores, sources = validation_scores(
            model, probe.to(device), validation_tensors, validation_id, summary["chosen_epoch"]
        )
    meta = CheckpointMeta(
        genes=genes,
        latent_dim=config.training.latent_dim,
        dropout=config.training.dropout,
        graph_k=config.graph.k,
        encoder=encoder,
        patch_px=config.features.patch_px,
        patch_mpp=config.features.patch_mpp,
        trained_on=[encoded.section_id for encoded in training],
        nucleus_counter=config.training.nucleus_counter.value,
        stain=stain or StainSetting(),
        library_size=config.training.library_size,
        gene_scores=scores,
        gene_score_sources=sources,
        gene_sets=gene_sets([encoded.section for encoded in training], config.training, genes),
        feature_components=model.shape.input_components,
        linear_path=model.shape.linear_path,
        probe_components=probe.n_components,
        training={
            **summary,
            "validation_section": validation_id,
            "probe_alpha": float(probe.alpha),
            **config.training.model_dump(mode="json"),
        },
    )
    return Checkpoint(model.cpu(), probe.cpu(), meta)


def train(
    sources: Sequence[SectionSource],
    validation_id: str | None,
    config: PipelineConfig,
    resume_path: Path | None = None,
) -> Checkpoint:
    seed_everything(config.training.seed)
    sections = load_sections(sources, config.training.min_spot_counts)
    runner = TorchRunner(load_encoder(config.encoder), pick_device(config.features.device))
    logger.info("encoder: %s", runner.identity.describe())
    stain = training_stain([s for s in sections if s.section_id != validation_id], config)
    encoded = encode_sections(sections, config, runner, stain)
    return fit(encoded, validation_id, config, runner.identity, resume_path, stain=stain)
