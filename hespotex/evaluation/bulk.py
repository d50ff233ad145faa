"""`hespotex evaluate-bulk`: predicted pseudo-bulk against measured bulk RNA-seq.

The paper's TCGA check: each slide's mean predicted expression (``pseudobulk.tsv``) against
the bulk RNA-seq of the same sample. Slides are matched to bulk samples by a slide → sample
map (TSV ``slide_id``, ``sample_id``); without one, TCGA slides by barcode (a slide's sample is
its patient and sample type; the bulk's aliquots of a sample are averaged), other ids by
identity. Several slides of one sample are averaged. Bulk values given as TPM/FPKM/counts are
compared after log1p, like the predicted log1p CPM. Per gene: Pearson and Spearman across
samples; per sample: both across genes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from hespotex.errors import InputDataError
from hespotex.io.atomic import write_json, write_tsv
from hespotex.io.figures import plt, save_figure
from hespotex.metrics import pearson_per_gene
from hespotex.tcga import sample_of

logger = logging.getLogger(__name__)

MIN_SAMPLES = 3
BEST_GENES_SHOWN = 6


def read_expression_table(path: Path) -> pd.DataFrame:
    """A samples × genes TSV, ids in the first column."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", index_col=0)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputDataError(path, f"not a readable TSV table: {error}") from None
    if table.shape[1] == 0 or table.shape[0] == 0:
        raise InputDataError(path, "needs one row per sample and one column per gene")
    table.index = table.index.astype(str)
    if table.index.duplicated().any():
        duplicates = sorted(set(table.index[table.index.duplicated()]))[:5]
        raise InputDataError(path, f"duplicate ids in the first column: {duplicates}")
    non_numeric = [
        column for column in table.columns if not pd.api.types.is_numeric_dtype(table[column])
    ]
    if non_numeric:
        raise InputDataError(path, f"non-numeric values in column(s) {non_numeric[:5]}")
    return table


def read_slide_map(path: Path) -> dict[str, str]:
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputDataError(path, f"not a readable slide map: {error}") from None
    if not {"slide_id", "sample_id"} <= set(table.columns):
        raise InputDataError(path, "the slide map needs columns slide_id and sample_id")
    return dict(zip(table["slide_id"], table["sample_id"], strict=True))


def column_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns over the rows where both are finite; NaN
    where either column is constant there or fewer than 3 rows remain."""
    count = (np.isfinite(a) & np.isfinite(b)).sum(axis=0)
    return np.where(count >= MIN_SAMPLES, pearson_per_gene(a, b), np.nan)


def column_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of matching columns, ranking each over its finite pairs."""
    valid = np.isfinite(a) & np.isfinite(b)
    if valid.all():
        return column_correlation(rankdata(a, axis=0), rankdata(b, axis=0))
    result = np.full(a.shape[1], np.nan)
    for column in range(a.shape[1]):
        rows = valid[:, column]
        ranked_a = rankdata(a[rows, column])[:, None]
        ranked_b = rankdata(b[rows, column])[:, None]
        result[column] = column_correlation(ranked_a, ranked_b)[0]
    return result


def by_tcga_sample(
    pseudobulk: pd.DataFrame, bulk: pd.DataFrame
) -> tuple[dict[str, str], pd.DataFrame] | None:
    """Slides and bulk rows joined by TCGA barcode (``hespotex.tcga``): each slide to its
    sample, the bulk's aliquots of one sample averaged. None where no slide id is a TCGA slide's
    or no bulk id a TCGA sample's."""
    slide_to_sample = {
        slide: sample for slide in pseudobulk.index if (sample := sample_of(slide)) is not None
    }
    bulk_samples = pd.Series([sample_of(name) for name in bulk.index], index=bulk.index)
    if not slide_to_sample or bulk_samples.isna().all():
        return None
    named = bulk_samples.dropna()
    return slide_to_sample, bulk.loc[named.index].groupby(named.values).mean()


def match_samples(
    pseudobulk: pd.DataFrame,
    bulk: pd.DataFrame,
    slide_to_sample: dict[str, str] | None,
    pseudobulk_path: Path,
    bulk_path: Path,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Predicted and measured tables on the same samples (rows) and genes (columns), and how
    they were matched: by the map where given, else by TCGA barcode where the ids are TCGA's,
    else by identical ids."""
    how = "the slide map"
    if slide_to_sample is None:
        joined = by_tcga_sample(pseudobulk, bulk)
        if joined is not None:
            slide_to_sample, bulk = joined
            how = "TCGA barcode (slide ...-01Z-00-DX1 → sample ...-01)"
        else:
            how = "identical ids"
    samples = pd.Series(
        [(slide_to_sample or {}).get(slide, slide) for slide in pseudobulk.index],
        index=pseudobulk.index,
    )
    matched = samples[samples.isin(bulk.index)]
    logger.info(
        "%d of %d slides matched %d of %d bulk samples, by %s",
        len(matched),
        len(samples),
        matched.nunique(),
        len(bulk),
        how,
    )
    if len(set(matched)) < MIN_SAMPLES:
        raise InputDataError(
            bulk_path,
            f"only {len(set(matched))} sample(s) match slides of {pseudobulk_path} "
            f"(at least {MIN_SAMPLES} needed); pass --map with slide_id and sample_id columns",
        )
    genes = [gene for gene in pseudobulk.columns if gene in bulk.columns]
    if not genes:
        raise InputDataError(bulk_path, f"no gene in common with {pseudobulk_path}")
    predicted = pseudobulk.loc[matched.index, genes].groupby(matched.values).mean()
    measured = bulk.loc[predicted.index, genes]
    matching = {
        "matched_by": how,
        "slides": len(samples),
        "slides_matched": len(matched),
        "bulk_samples": len(bulk),
    }
    return predicted, measured, matching


def evaluate_bulk(
    predicted: pd.DataFrame, measured: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    p = predicted.to_numpy(dtype=np.float64)
    m = measured.to_numpy(dtype=np.float64)
    genes = pd.DataFrame(
        {
            "gene": predicted.columns,
            "pearson": column_correlation(p, m),
            "spearman": column_spearman(p, m),
            "mean_predicted": p.mean(axis=0),
            "mean_measured": m.mean(axis=0),
        }
    ).sort_values("spearman", ascending=False, na_position="last")
    samples = pd.DataFrame(
        {
            "sample_id": predicted.index,
            "pearson": column_correlation(p.T, m.T),
            "spearman": column_spearman(p.T, m.T),
        }
    )
    summary = {
        "samples": int(p.shape[0]),
        "genes": int(p.shape[1]),
        "genes_with_a_correlation": int(genes["spearman"].notna().sum()),
        "gene_pearson_mean": _nan_stat(genes["pearson"], np.mean),
        "gene_pearson_median": _nan_stat(genes["pearson"], np.median),
        "gene_spearman_mean": _nan_stat(genes["spearman"], np.mean),
        "gene_spearman_median": _nan_stat(genes["spearman"], np.median),
        "share_of_genes_spearman_above_0": _nan_stat(genes["spearman"] > 0, np.mean),
        "sample_pearson_mean": _nan_stat(samples["pearson"], np.mean),
        "sample_spearman_mean": _nan_stat(samples["spearman"], np.mean),
    }
    return genes, samples, summary


def _nan_stat(values: pd.Series, statistic) -> float | None:
    finite = values.to_numpy(dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return round(float(statistic(finite)), 4) if len(finite) else None


def write_best_genes_plot(
    path: Path, predicted: pd.DataFrame, measured: pd.DataFrame, genes: pd.DataFrame
) -> None:
    best = genes.dropna(subset=["spearman"]).head(BEST_GENES_SHOWN)
    figure, axes = plt.subplots(
        1, max(1, len(best)), figsize=(3.2 * max(1, len(best)), 3.4), squeeze=False
    )
    for panel, row in zip(axes[0], best.itertuples(), strict=False):
        panel.scatter(measured[row.gene], predicted[row.gene], s=12)
        panel.set_title(f"{row.gene}\nSpearman {row.spearman:.2f}, Pearson {row.pearson:.2f}")
        panel.set_xlabel("measured bulk (log1p)")
        panel.set_ylabel("predicted pseudo-bulk")
    save_figure(figure, path, dpi=100)


def run_evaluate_bulk(
    pseudobulk_path: Path,
    bulk_path: Path,
    out_dir: Path,
    map_path: Path | None = None,
    bulk_is_log: bool = False,
) -> dict:
    pseudobulk = read_expression_table(pseudobulk_path)
    bulk = read_expression_table(bulk_path)
    if not bulk_is_log:
        if (bulk.to_numpy() < 0).any():
            raise InputDataError(
                bulk_path, "negative values: pass --bulk-is-log if they are already logged"
            )
        bulk = np.log1p(bulk)
    slide_to_sample = read_slide_map(map_path) if map_path else None
    predicted, measured, matching = match_samples(
        pseudobulk, bulk, slide_to_sample, Path(pseudobulk_path), Path(bulk_path)
    )
    genes, samples, summary = evaluate_bulk(predicted, measured)
    summary.update(
        pseudobulk=str(pseudobulk_path), bulk=str(bulk_path), bulk_log1p=not bulk_is_log, **matching
    )
    out_dir = Path(out_dir)
    write_tsv(out_dir / "genes.tsv", genes)
    write_tsv(out_dir / "samples.tsv", samples)
    write_json(out_dir / "summary.json", summary)
    write_best_genes_plot(out_dir / "best_genes.png", predicted, measured, genes)
    return summary
