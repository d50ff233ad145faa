"""Training sections loaded, encoded and put on the device: what the training loops read.

Sections are loaded by their layout (``hespotex.io.sections``) and cleared of spots with
too few counts; every spot's patch is read and encoded once, as the pipeline's features stage
does (``hespotex.encoder.encoding``), with its nucleus count when configured, and stain
normalised when configured: each section's stain measured on its own patches and mapped to the
target (``training_stain``: a reference image, or the pooled stain of the training sections,
which the checkpoint then stores as its target). On the device each
section holds its log-normalised expression, features and spatial blocks over the decoder's
and the autoencoder's kNN graphs (``hespotex.network.blocks``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hespotex.config import NucleusCounter, PipelineConfig, StainNormalisation
from hespotex.encoder.encoding import encode_patches, fit_slide_stain, sample_patches
from hespotex.encoder.runners import TorchRunner
from hespotex.encoder.stain import StainSetting, fit_profile, reference_setting
from hespotex.errors import InputDataError
from hespotex.io.sections import Section, SectionSource, load_section
from hespotex.io.slide import open_slide
from hespotex.network.blocks import SpotBlock, spot_blocks
from hespotex.network.spot_graph import knn_edges
from hespotex.network.streams import ExpressionAutoencoder, ImageStream, nucleus_scale

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
    nucleus_scale: torch.Tensor | None
    latent: torch.Tensor | None = None

    def nucleus_scale_of(self, block: SpotBlock) -> torch.Tensor | None:
        return None if self.nucleus_scale is None else self.nucleus_scale[block.nodes]


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


def training_stain(sections: Sequence[Section], config: PipelineConfig) -> StainSetting:
    """What training normalises to: nothing, the reference image of ``stain.target``, or
    (``stain.target: checkpoint``) the stain of ``sections`` (the training sections, never
    the validation or test ones) measured on their pooled patches, as each slide's own stain
    is measured."""
    method = config.stain.normalisation
    if method == StainNormalisation.NONE:
        return StainSetting()
    if config.stain.target_image is not None:
        return reference_setting(method, config.stain.target_image)
    patches = []
    for section in sections:
        with open_slide(section.image, section.section_id, section.mpp) as slide:
            patches.append(
                sample_patches(slide, section.centres_px, config.features, config.stain.fit_patches)
            )
    names = ", ".join(section.section_id for section in sections)
    setting = StainSetting(
        method=method,
        target=fit_profile(method, patches, f"training sections {names}"),
        target_source=f"training sections {names}",
    )
    logger.info("stain target: %s", setting.describe())
    return setting


def encode_sections(
    sections: Sequence[Section],
    config: PipelineConfig,
    runner: TorchRunner,
    stain: StainSetting | None = None,
) -> list[EncodedSection]:
    """Read every spot's patch once, as the pipeline's features stage does; normalise its
    stain to ``stain``'s target, encode it, and count its nuclei when configured."""
    counter = config.training.nucleus_counter
    stain = stain or StainSetting()
    encoded = []
    for section in sections:
        with open_slide(section.image, section.section_id, section.mpp) as slide:
            transform = fit_slide_stain(
                slide, section.centres_px, config.features, stain, config.stain.fit_patches
            )
            batches = list(
                encode_patches(
                    slide,
                    section.centres_px,
                    runner,
                    config.features,
                    f"encoding {section.section_id}",
                    counter,
                    transform,
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
            encoded.section.log_expression(genes, library_size=config.training.library_size),
            dtype=torch.float32,
            device=device,
        ),
        features=torch.tensor(encoded.features, dtype=torch.float32, device=device),
        decoder_blocks=decoder_blocks,
        gate_blocks=gate_blocks,
        nucleus_scale=None
        if encoded.nucleus_counts is None
        else nucleus_scale(torch.tensor(encoded.nucleus_counts, device=device)),
    )
