"""`hespotex evaluate`: a checkpoint's predictions against measured expression.

Per section and gene: Pearson across spots, MSE and SSIM of the gene maps, against CPM +
log1p of the measured counts (the checkpoint's normalisation). Per section: the means over
all genes and over the top-N highly variable genes (the checkpoint's first N: ranked on its
training sections, so the test section does not choose them). Written as ``genes.tsv``,
``summary.json`` and, per section, ``{section}.maps.png`` with measured beside predicted
maps of the best and worst genes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hespotex.config import NucleusCounter, PipelineConfig
from hespotex.encoder.build import load_encoder
from hespotex.encoder.devices import pick_device
from hespotex.encoder.runners import TorchRunner
from hespotex.encoder.stain import configured_setting
from hespotex.io.atomic import write_json, write_tsv
from hespotex.io.sections import SectionSource
from hespotex.metrics import mse_per_gene, pearson_per_gene, ssim_per_gene
from hespotex.network.checkpoint import CheckpointMeta, check_checkpoint_encoder, load_checkpoint
from hespotex.network.spot_graph import knn_edges
from hespotex.network.streams import ImageStream, nucleus_scale
from hespotex.training.data import EncodedSection, encode_sections, load_sections

logger = logging.getLogger(__name__)

TOP_GENES = 50
MAP_GENES = 3


def predict_section(model: ImageStream, graph_k: int, encoded: EncodedSection) -> np.ndarray:
    edges = torch.from_numpy(knn_edges(encoded.section.centres_px, graph_k))
    counts = encoded.nucleus_counts
    scale = None if counts is None else nucleus_scale(torch.from_numpy(counts))
    features = torch.from_numpy(encoded.features).float()
    return model.eval().predict(features, edges, nucleus_scale=scale).numpy()


def score_genes(
    section_id: str,
    genes: Sequence[str],
    measured: np.ndarray,
    predicted: np.ndarray,
    centres: np.ndarray,
    top_genes: int = TOP_GENES,
) -> pd.DataFrame:
    """One row per gene: Pearson, MSE, SSIM, and whether it is a top-N variable gene."""
    return pd.DataFrame(
        {
            "section": section_id,
            "gene": list(genes),
            "pearson": pearson_per_gene(measured, predicted),
            "mse": mse_per_gene(measured, predicted),
            "ssim": ssim_per_gene(centres, measured, predicted),
            "top_hvg": np.arange(len(genes)) < top_genes,
        }
    )


def summarise(table: pd.DataFrame) -> dict[str, float | int]:
    top = table[table["top_hvg"]]
    return {
        "n_spots": int(table.attrs.get("n_spots", 0)),
        "n_genes": len(table),
        "n_constant_genes": int(table["pearson"].isna().sum()),
        "pearson_all": float(table["pearson"].mean()),
        "pearson_top_hvg": float(top["pearson"].mean()),
        "n_top_hvg": len(top),
        "mse": float(table["mse"].mean()),
        "ssim": float(table["ssim"].mean()),
    }


def write_maps(
    path: Path,
    section_id: str,
    centres: np.ndarray,
    table: pd.DataFrame,
    measured: np.ndarray,
    predicted: np.ndarray,
) -> None:
    """Measured beside predicted maps of the ``MAP_GENES`` best and worst genes."""
    from hespotex.io.figures import plt, save_figure

    ranked = table.dropna(subset=["pearson"]).sort_values("pearson", ascending=False)
    picks = list(dict.fromkeys([*ranked.index[:MAP_GENES], *ranked.index[-MAP_GENES:]]))
    figure, axes = plt.subplots(len(picks), 2, figsize=(8, 3.6 * len(picks)), squeeze=False)
    for row, index in enumerate(picks):
        gene, pearson = table.at[index, "gene"], table.at[index, "pearson"]
        for column, (what, values) in enumerate((("measured", measured), ("predicted", predicted))):
            panel = axes[row, column]
            points = panel.scatter(
                centres[:, 0], centres[:, 1], c=values[:, index], s=12, cmap="magma"
            )
            panel.set_title(f"{gene} {what}" + (f" (r = {pearson:.2f})" if column else ""))
            panel.set_aspect("equal")
            panel.invert_yaxis()
            panel.set_axis_off()
            figure.colorbar(points, ax=panel, fraction=0.04, label="log1p CPM")
    figure.suptitle(f"{section_id}: best and worst genes")
    save_figure(figure, path, dpi=80)


def evaluate_encoded(
    model: ImageStream,
    meta: CheckpointMeta,
    sections: Sequence[EncodedSection],
    out_dir: Path | None,
    top_genes: int = TOP_GENES,
) -> tuple[pd.DataFrame, dict[str, dict]]:
    tables, summary = [], {}
    for encoded in sections:
        measured = encoded.section.log_expression(meta.genes, meta.target_sum, meta.library_size)
        predicted = predict_section(model, meta.graph_k, encoded)
        centres = encoded.section.centres_px
        table = score_genes(encoded.section_id, meta.genes, measured, predicted, centres, top_genes)
        table.attrs["n_spots"] = len(centres)
        summary[encoded.section_id] = summarise(table)
        logger.info(
            "%s: mean Pearson %.4f (all %d genes), %.4f (top %d HVG); MSE %.4f; SSIM %.4f",
            encoded.section_id,
            summary[encoded.section_id]["pearson_all"],
            len(meta.genes),
            summary[encoded.section_id]["pearson_top_hvg"],
            summary[encoded.section_id]["n_top_hvg"],
            summary[encoded.section_id]["mse"],
            summary[encoded.section_id]["ssim"],
        )
        if out_dir is not None:
            write_maps(
                out_dir / f"{encoded.section_id}.maps.png",
                encoded.section_id,
                centres,
                table,
                measured,
                predicted,
            )
        tables.append(table)
    return pd.concat(tables, ignore_index=True), summary


def run_evaluate(
    checkpoint: Path,
    sources: Sequence[SectionSource],
    config: PipelineConfig,
    out_dir: Path,
    top_genes: int = TOP_GENES,
) -> dict[str, dict]:
    model, meta = load_checkpoint(checkpoint)
    runner = TorchRunner(load_encoder(config.encoder), pick_device(config.features.device))
    check_checkpoint_encoder(checkpoint, meta, "the config's encoder", runner.identity)
    overlapping = sorted({source.section_id for source in sources} & set(meta.trained_on))
    if overlapping:
        logger.warning("evaluating on training section(s) %s: not a held-out score", overlapping)
    sections = load_sections(sources, config.training.min_spot_counts)
    evaluation_config = config.model_copy(
        update={
            "training": config.training.model_copy(
                update={"nucleus_counter": NucleusCounter(meta.nucleus_counter)}
            )
        }
    )
    stain = configured_setting(config.stain, meta.stain, checkpoint)
    encoded = encode_sections(sections, evaluation_config, runner, stain)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, summary = evaluate_encoded(model, meta, encoded, out_dir, top_genes)
    write_tsv(out_dir / "genes.tsv", table)
    write_json(out_dir / "summary.json", {"checkpoint": str(checkpoint), "sections": summary})
    return summary
