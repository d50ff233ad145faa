"""Which genes a model predicts, chosen from training sections only.

Depth-aware by construction: seurat_v3 (scanpy) ranks genes within each section by the
variance of their counts standardised against a loess fit of variance on mean, so a shallow
section's sampling noise does not promote housekeeping genes, and pooling sections of
different depth cannot pick depth differences. The union of each section's top genes is
kept, ranked by their best (smallest) per-section rank; the ranking also fixes which genes
count as "top highly variable" in evaluation, without looking at a test section.

Two gene sets are predicted whatever the ranking and scored apart (``gene_sets``): the genes
of highest variance of log1p CPM over the training sections' spots pooled (the genes a user
looks at first: between-section and within-section variation alike), and a marker panel named
in the config. Both are computed from training sections only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hespotex.config import GeneSelection, TrainingConfig
from hespotex.errors import InputDataError
from hespotex.io.sections import Section

logger = logging.getLogger(__name__)


def shared_genes(sections: Sequence[Section]) -> list[str]:
    shared = set.intersection(*(set(section.genes) for section in sections))
    if not shared:
        raise InputDataError(sections[0].image, "the sections share no gene")
    return [gene for gene in sections[0].genes if gene in shared]


def seurat_v3_ranks(section: Section, genes: list[str]) -> pd.Series:
    """Rank (0 = most variable) of each of ``genes`` in ``section`` by scanpy's seurat_v3
    normalised variance, computed on raw counts."""
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(section.gene_counts(genes).astype(np.float32))
    adata.var_names = genes
    expressed = np.asarray(adata.X.sum(axis=0)).ravel() > 0
    adata = adata[:, expressed].copy()
    try:
        table = sc.pp.highly_variable_genes(
            adata, flavor="seurat_v3", n_top_genes=adata.n_vars, inplace=False
        )
        normalised_variance = table["variances_norm"].to_numpy()
    except ValueError:
        # loess cannot fit a handful of genes; a quadratic trend does the same job there.
        normalised_variance = quadratic_normalised_variance(np.asarray(adata.X))
    order = normalised_variance.argsort(kind="stable")[::-1]
    ranks = pd.Series(len(genes), index=genes, dtype=np.int64)
    ranks[adata.var_names[order]] = np.arange(len(order))
    return ranks


def quadratic_normalised_variance(counts: np.ndarray) -> np.ndarray:
    """seurat_v3's statistic with a quadratic instead of a loess trend of log10 variance on
    log10 mean: the variance of counts standardised by the trend's sd, clipped at √n."""
    mean, variance = counts.mean(axis=0), counts.var(axis=0, ddof=1)
    varying = variance > 0
    trend = np.zeros_like(mean)
    coefficients = np.polyfit(np.log10(mean[varying]), np.log10(variance[varying]), deg=2)
    trend[varying] = np.polyval(coefficients, np.log10(mean[varying]))
    expected_sd = np.sqrt(10**trend)
    clipped = np.minimum(counts, mean + expected_sd * np.sqrt(len(counts)))
    return ((clipped - mean) ** 2).sum(axis=0) / ((len(counts) - 1) * expected_sd**2)


def detected_in_every_section(
    sections: Sequence[Section], genes: list[str], min_cells: int
) -> list[str]:
    """``genes`` with a count in at least ``min_cells`` spots of every section."""
    keep = np.ones(len(genes), dtype=bool)
    for section in sections:
        columns = section.genes.get_indexer(genes)
        keep &= np.asarray((section.counts[:, columns] > 0).sum(axis=0)).ravel() >= min_cells
    if not keep.any():
        raise InputDataError(
            sections[0].image, f"no gene is detected in {min_cells} spots of every section"
        )
    return [gene for gene, kept in zip(genes, keep, strict=True) if kept]


def genes_of_interest(wanted: Sequence[str], chosen: list[str], available: list[str]) -> list[str]:
    """``training.include_genes`` not chosen already; each must be available."""
    known = set(available)
    absent = [gene for gene in wanted if gene not in known]
    if absent:
        raise InputDataError(
            "training.include_genes",
            f"{', '.join(absent)} not in every section (or detected in too few spots)",
        )
    taken = set(chosen)
    return [gene for gene in dict.fromkeys(wanted) if gene not in taken]


def read_gene_list(path: Path, available: list[str]) -> list[str]:
    try:
        wanted = [line.strip() for line in Path(path).read_text().splitlines()]
    except OSError as error:
        raise InputDataError(path, f"cannot read the gene list: {error.strerror}") from None
    wanted = list(dict.fromkeys(gene for gene in wanted if gene and not gene.startswith("#")))
    if not wanted:
        raise InputDataError(path, "the gene list is empty")
    known = set(available)
    absent = [gene for gene in wanted if gene not in known]
    if absent:
        raise InputDataError(path, f"{len(absent)} gene(s) not in every section: {absent[:10]}")
    return wanted


TOP_VARIANCE = "top_variance"
MARKERS = "markers"


def top_variance_genes(sections: Sequence[Section], genes: list[str], n_top: int) -> list[str]:
    """The ``n_top`` of ``genes`` with the highest variance of log1p CPM (over all of a spot's
    counts) across every spot of ``sections`` pooled, highest first."""
    if n_top == 0:
        return []
    pooled = np.concatenate([section.log_expression(genes) for section in sections])
    order = np.argsort(-pooled.var(axis=0), kind="stable")[:n_top]
    return [genes[index] for index in order]


def marker_genes(wanted: Sequence[str], available: list[str]) -> list[str]:
    """The panel's genes among ``available`` (a panel for another tissue is not an error)."""
    known = set(available)
    return [gene for gene in dict.fromkeys(wanted) if gene in known]


def gene_sets(
    sections: Sequence[Section], config: TrainingConfig, available: list[str]
) -> dict[str, list[str]]:
    """The scored gene sets beside every predicted gene: ``top_variance`` and ``markers``."""
    return {
        TOP_VARIANCE: top_variance_genes(sections, available, config.top_variance_genes),
        MARKERS: marker_genes(config.marker_genes, available),
    }


def select_genes(
    sections: Sequence[Section],
    config: TrainingConfig,
    also_in: Sequence[pd.Index] = (),
    ranks_by_section: Mapping[str, pd.Series] | None = None,
) -> list[str]:
    """The genes to predict, most variable first (see the module docstring), among those
    every training section has and every index in ``also_in`` (the gene names of the
    validation and test sections: names only, no values, are looked at).
    ``ranks_by_section`` may hold ``seurat_v3_ranks`` already computed on more genes. The
    ``gene_sets`` are added, unless a gene list is given (then they are taken within it)."""
    shared = shared_genes(sections)
    for genes in also_in:
        named = set(genes)
        shared = [gene for gene in shared if gene in named]
    shared = detected_in_every_section(sections, shared, config.min_cells)
    ranks = pd.concat(
        [
            ranks_by_section[section.section_id].reindex(shared)
            if ranks_by_section is not None
            else seurat_v3_ranks(section, shared)
            for section in sections
        ],
        axis=1,
    )
    best_rank = ranks.min(axis=1)
    if config.genes_file is not None:
        chosen = read_gene_list(config.genes_file, shared)
        how = f"the list {config.genes_file}"
    elif config.gene_selection is GeneSelection.SHARED:
        chosen = shared
        how = "every shared gene"
    else:
        chosen = best_rank.index[best_rank < config.n_genes].tolist()
        how = f"union of each section's top {config.n_genes} seurat_v3 genes"
    chosen = [*chosen, *genes_of_interest(config.include_genes, chosen, shared)]
    if config.genes_file is None:
        for members in gene_sets(sections, config, shared).values():
            taken = set(chosen)
            chosen = [*chosen, *(gene for gene in members if gene not in taken)]
    missing = sorted(set(config.marker_genes) - set(chosen))
    if missing:
        logger.warning(
            "training.marker_genes: %d of %d not predicted (not in every section, too rarely "
            "detected, or not in the gene list), so not scored: %s",
            len(missing),
            len(set(config.marker_genes)),
            ", ".join(missing),
        )
    ordered = best_rank[chosen].sort_values(kind="stable").index.tolist()
    logger.info(
        "genes: %d (%s) of %d shared; most variable: %s",
        len(ordered),
        how,
        len(shared),
        ", ".join(ordered[:20]),
    )
    return ordered
