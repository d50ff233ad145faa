"""`hespotex train`: a HESpotEx checkpoint from paired ST + H&E sections.

1. Genes: those shared by every section, then the most variable after CPM + log1p (or a list).
2. Expression stream: the graph attention autoencoder on each section's spatial kNN graph
   (k = 8, self loops), trained over the sections in turn; its bottleneck is each spot's
   expression latent.
3. Image stream: features of each spot's patch from the frozen encoder (the pipeline's own
   reader and encoder, so training and inference see the same pixels), then the heads and
   graph decoder, trained with (1 − Pearson(expression latent, image latent)) + MSE, one
   section per step. With a validation section the epoch is chosen on it, never on a test one.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional
from tqdm import tqdm

from hespotex.checkpoint import CheckpointMeta, EncoderRecord
from hespotex.config import PipelineConfig, TrainingConfig
from hespotex.encoders import load_encoder, pick_device
from hespotex.errors import InputDataError
from hespotex.features import encode_patches
from hespotex.graph import knn_edges
from hespotex.model import ExpressionAutoencoder, ImageStream, ImageStreamShape, pearson_rows
from hespotex.runners import TorchRunner
from hespotex.sections import Section, SectionSource, load_section, log_normalise
from hespotex.slide import open_backend, open_slide

logger = logging.getLogger(__name__)


@dataclass
class SectionTensors:
    section_id: str
    expression: torch.Tensor
    features: torch.Tensor
    decoder_edges: torch.Tensor
    gate_edges: torch.Tensor
    latent: torch.Tensor | None = None


def select_genes(sections: Sequence[Section], config: TrainingConfig) -> list[str]:
    shared = sorted(set.intersection(*(set(section.counts.columns) for section in sections)))
    if not shared:
        raise InputDataError(sections[0].image, "the sections share no gene")
    if config.genes_file is not None:
        wanted = [line.strip() for line in Path(config.genes_file).read_text().splitlines()]
        wanted = [gene for gene in wanted if gene]
        absent = [gene for gene in wanted if gene not in shared]
        if absent:
            raise InputDataError(config.genes_file, f"genes not in every section: {absent[:10]}")
        return wanted
    variances = []
    for section in sections:
        counts = section.counts[shared].to_numpy(dtype=np.float64)
        variances.append(log_normalise(counts).var(axis=0))
    order = np.argsort(-np.mean(variances, axis=0), kind="stable")
    chosen = [shared[index] for index in order[: config.n_genes]]
    return sorted(chosen)


def encode_section(section: Section, config: PipelineConfig, runner: TorchRunner) -> np.ndarray:
    with open_slide(section.image, section.section_id, section.mpp) as slide:
        batches = encode_patches(
            slide, section.centres_px, runner, config.features, section.section_id
        )
        return np.concatenate(list(batches))


def prepare_sections(
    sources: Sequence[SectionSource], config: PipelineConfig, device: torch.device
) -> tuple[list[SectionTensors], list[str], EncoderRecord]:
    sections = []
    for source in sources:
        backend = open_backend(source.image)
        size = tuple(backend.level_dimensions[0])
        backend.close()
        sections.append(load_section(source, size))
    genes = select_genes(sections, config.training)
    runner = TorchRunner(load_encoder(config.encoder), device)
    logger.info("encoder: %s", runner.identity.describe())
    prepared = []
    for section in sections:
        totals = section.counts.to_numpy(dtype=np.float64)
        normalised = log_normalise(totals)
        column = {gene: index for index, gene in enumerate(section.counts.columns)}
        expression = normalised[:, [column[gene] for gene in genes]]
        features = encode_section(section, config, runner)
        coords = section.centres_px
        prepared.append(
            SectionTensors(
                section_id=section.section_id,
                expression=torch.tensor(expression, dtype=torch.float32, device=device),
                features=torch.tensor(features, dtype=torch.float32, device=device),
                decoder_edges=torch.from_numpy(knn_edges(coords, config.graph.k)).to(device),
                gate_edges=torch.from_numpy(
                    knn_edges(coords, config.training.gate_k, self_loops=True)
                ).to(device),
            )
        )
    identity = runner.identity
    record = EncoderRecord(
        architecture=identity.architecture,
        weights_sha256=identity.weights_sha256,
        random_weights=identity.is_random,
        feature_dim=identity.feature_dim,
        mean=identity.mean,
        std=identity.std,
        patch_px=config.features.patch_px,
        patch_mpp=config.features.patch_mpp,
    )
    return prepared, genes, record


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
    prediction, latent = model(section.features, section.decoder_edges)
    alignment = 1 - pearson_rows(section.latent, latent).mean()
    mse = functional.mse_loss(prediction, section.expression)
    return alignment + mse, alignment, mse


def train_image_stream(
    training: Sequence[SectionTensors],
    validation: SectionTensors | None,
    n_genes: int,
    config: TrainingConfig,
) -> tuple[ImageStream, dict]:
    device = training[0].features.device
    shape = ImageStreamShape(
        feature_dim=training[0].features.shape[1],
        latent_dim=config.latent_dim,
        n_genes=n_genes,
        dropout=config.dropout,
    )
    model = ImageStream(shape).to(device)
    model.standardise_with(torch.cat([section.features for section in training]))
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    best_state, best_loss, best_epoch, stale = None, float("inf"), 0, 0
    progress = tqdm(range(1, config.epochs + 1), desc="image stream", mininterval=5)
    for epoch in progress:
        model.train()
        for section in training:
            optimiser.zero_grad()
            loss, alignment, mse = image_stream_loss(model, section)
            loss.backward()
            optimiser.step()
        postfix = {"alignment": f"{alignment.item():.4f}", "mse": f"{mse.item():.4f}"}
        if validation is None:
            progress.set_postfix(postfix, refresh=False)
            continue
        model.eval()
        with torch.no_grad():
            validation_loss = image_stream_loss(model, validation)[0].item()
        progress.set_postfix({**postfix, "validation": f"{validation_loss:.4f}"}, refresh=False)
        if validation_loss < best_loss:
            best_state, best_loss, best_epoch, stale = (
                copy.deepcopy(model.state_dict()),
                validation_loss,
                epoch,
                0,
            )
        else:
            stale += 1
            if stale >= config.patience:
                logger.info(
                    "early stop at epoch %d: no better validation loss for %d epochs",
                    epoch,
                    config.patience,
                )
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        logger.info("kept epoch %d (validation loss %.4f)", best_epoch, best_loss)
    summary = {
        "epochs_run": epoch,
        "chosen_epoch": best_epoch if validation is not None else epoch,
        "validation_loss": best_loss if validation is not None else None,
        "final_training_loss": loss.item(),
    }
    return model.eval(), summary


def train(
    sources: Sequence[SectionSource], validation_id: str | None, config: PipelineConfig
) -> tuple[ImageStream, CheckpointMeta]:
    torch.manual_seed(config.training.seed)
    np.random.seed(config.training.seed)
    device = pick_device(config.features.device)
    prepared, genes, encoder_record = prepare_sections(sources, config, device)
    train_expression_latents(prepared, len(genes), config.training)
    validation = next((s for s in prepared if s.section_id == validation_id), None)
    if validation_id is not None and validation is None:
        raise InputDataError(validation_id, "the validation section is not in the sheet")
    training = [section for section in prepared if section is not validation]
    if not training:
        raise InputDataError(validation_id, "no section is left to train on")
    model, summary = train_image_stream(training, validation, len(genes), config.training)
    meta = CheckpointMeta(
        genes=genes,
        latent_dim=config.training.latent_dim,
        dropout=config.training.dropout,
        graph_k=config.graph.k,
        encoder=encoder_record,
        trained_on=[section.section_id for section in training],
        training={
            **summary,
            "validation_section": validation_id,
            **config.training.model_dump(mode="json"),
        },
    )
    return model.cpu(), meta
