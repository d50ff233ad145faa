"""The training loops: the expression autoencoder, then the image stream aligned to it.

A section larger than ``spots_per_step`` trains in spatial blocks: each block's loss (its core
spots' terms over the section's size) is backpropagated in turn and the section's step sums
them, the same step as on the whole graph with memory bounded by a block. One step per
section per epoch; the autoencoder trains over the sections in turn and each section's
latent is read after its own epochs, as the authors do.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from hespotex.config import TrainingConfig
from hespotex.metrics import pearson_rows
from hespotex.network.blocks import SpotBlock
from hespotex.network.streams import ExpressionAutoencoder, ImageStream
from hespotex.training.data import SectionTensors

logger = logging.getLogger(__name__)


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
    return model(section.features[nodes], block.edge_index, section.nucleus_scale_of(block))


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


def section_prediction(model: ImageStream, section: SectionTensors) -> torch.Tensor:
    model.eval()
    return blockwise_rows(
        section.decoder_blocks, functools.partial(image_stream_prediction, model, section)
    )


def validation_pearson(model: ImageStream, section: SectionTensors) -> float:
    """Mean over genes of the Pearson correlation of predicted and measured expression across
    the section's spots: the score reported on test sections, so the epoch chosen is the one
    that serves it."""
    prediction = section_prediction(model, section)
    return pearson_rows(prediction.T, section.expression.T).mean().item()
