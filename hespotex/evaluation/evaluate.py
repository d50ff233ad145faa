"""`hespotex evaluate`: a checkpoint's predictions against measured expression.

Per section and gene: Pearson across spots, MSE and SSIM of the gene maps, against CPM +
log1p of the measured counts (the checkpoint's normalisation). Per section: the means over
all genes and over each of the checkpoint's gene sets (the genes of highest variance and the
marker panel, chosen on its training sections, so the test section does not choose them), for
HESpotEx, the probe, their mean and ``best``; the summary and the maps are the served model's
(``decode.serve``). Written as ``genes.tsv``, ``summary.json`` and, per section,
``{section}.maps.png`` with measured beside predicted maps of the best and worst genes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hespotex.config import NucleusCounter, PipelineConfig, ServedModel
from hespotex.encoder.build import load_encoder
from hespotex.encoder.devices import pick_device
from hespotex.encoder.runners import TorchRunner
from hespotex.encoder.stain import configured_setting
from hespotex.io.atomic import write_json, write_tsv
from hespotex.io.sections import SectionSource
from hespotex.metrics import mse_per_gene, pearson_per_gene, ssim_per_gene
from hespotex.network.checkpoint import Checkpoint, check_checkpoint_encoder, load_checkpoint
from hespotex.network.serving import model_predictions, served_prediction
from hespotex.network.spot_graph import knn_edges
from hespotex.network.streams import ImageStream, nucleus_scale
from hespotex.training.data import EncodedSection, encode_sections, load_sections

logger = logging.getLogger(__name__)

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
    gene_sets: Mapping[str, Sequence[str]],
) -> pd.DataFrame:
    """One row per gene: Pearson, MSE, SSIM, and (``in_{set}``) whether it is in each set."""
    table = pd.DataFrame(
        {
            "section": section_id,
            "gene": list(genes),
            "pearson": pearson_per_gene(measured, predicted),
            "mse": mse_per_gene(measured, predicted),
            "ssim": ssim_per_gene(centres, measured, predicted),
        }
    )
    for name, members in gene_sets.items():
        table[f"in_{name}"] = table["gene"].isin(list(members))
    return table


def set_columns(table: pd.DataFrame) -> list[str]:
    return [column.removeprefix("in_") for column in table.columns if column.startswith("in_")]


def summarise(table: pd.DataFrame) -> dict[str, float | int]:
    """Means over all genes, and mean Pearson over each gene set (NaN for an empty one)."""
    summary = {
        "n_spots": int(table.attrs.get("n_spots", 0)),
        "n_genes": len(table),
        "n_constant_genes": int(table["pearson"].isna().sum()),
        "pearson_all": float(table["pearson"].mean()),
        "mse": float(table["mse"].mean()),
        "ssim": float(table["ssim"].mean()),
    }
    for name in set_columns(table):
        members = table[table[f"in_{name}"]]
        summary[f"pearson_{name}"] = float(members["pearson"].mean())
        summary[f"n_{name}"] = len(members)
    return summary


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


def section_predictions(
    checkpoint: Checkpoint, encoded: EncodedSection
) -> dict[ServedModel, np.ndarray]:
    """Spots × genes for each model the checkpoint serves, and ``best`` of them per gene."""
    model, probe, meta = checkpoint
    hespotex = predict_section(model, meta.graph_k, encoded)
    linear = probe.predict(encoded.features)
    served = meta.served_models(ServedModel.BEST, "the checkpoint")
    return {
        **model_predictions(hespotex, linear),
        ServedModel.BEST: served_prediction(hespotex, linear, served),
    }


def evaluate_encoded(
    checkpoint: Checkpoint,
    sections: Sequence[EncodedSection],
    out_dir: Path | None,
    serve: ServedModel,
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Per gene and model (column ``model``) the scores on each section; the summary and the
    maps are the ``serve``d model's."""
    meta = checkpoint.meta
    tables, summary = [], {}
    for encoded in sections:
        measured = encoded.section.log_expression(meta.genes, meta.target_sum, meta.library_size)
        centres = encoded.section.centres_px
        predictions = section_predictions(checkpoint, encoded)
        by_model = {
            model_name: score_genes(
                encoded.section_id, meta.genes, measured, predicted, centres, meta.gene_sets
            ).assign(model=model_name.value)
            for model_name, predicted in predictions.items()
        }
        tables.extend(by_model.values())
        served = by_model[serve]
        served.attrs["n_spots"] = len(centres)
        summary[encoded.section_id] = {"served": serve.value, **summarise(served)}
        logger.info(
            "%s, %s: mean Pearson %s; MSE %.4f; SSIM %.4f",
            encoded.section_id,
            serve.value,
            ", ".join(
                f"{summary[encoded.section_id][f'pearson_{name}']:.4f} ({name})"
                for name in ["all", *meta.gene_sets]
            ),
            summary[encoded.section_id]["mse"],
            summary[encoded.section_id]["ssim"],
        )
        if out_dir is not None:
            write_maps(
                out_dir / f"{encoded.section_id}.maps.png",
                encoded.section_id,
                centres,
                served,
                measured,
                predictions[serve],
            )
    return pd.concat(tables, ignore_index=True), summary


def run_evaluate(
    checkpoint: Path,
    sources: Sequence[SectionSource],
    config: PipelineConfig,
    out_dir: Path,
) -> dict[str, dict]:
    trained = load_checkpoint(checkpoint)
    meta = trained.meta
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
    table, summary = evaluate_encoded(trained, encoded, out_dir, config.decode.serve)
    write_tsv(out_dir / "genes.tsv", table)
    write_json(out_dir / "summary.json", {"checkpoint": str(checkpoint), "sections": summary})
    return summary
