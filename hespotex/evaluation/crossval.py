"""`hespotex crossval`: leave-one-section-out, HESpotEx against the ridge probe.

Each fold holds one section out for testing and trains on the rest, of which one (the next
section in the sheet after the test one, cyclically) is the validation section that chooses
HESpotEx's epoch and the probe's ridge strength; genes are chosen on the training sections.
Both are scored on the held-out section with the same genes, from the same frozen features,
which are encoded once per section for all folds and seeds; with stain normalisation to the
training sections' stain (``stain.target: checkpoint``) the target differs per fold, so the
sections are encoded once per fold, each normalised to that fold's training sections' stain
as its checkpoint would be. Written: ``folds.tsv`` (one row
per fold and seed), ``genes.tsv`` (per-gene scores), ``summary.json`` and ``summary.md``
(per fold and overall, mean ± sd over seeds). ``hespotex train --gene-scores`` copies each
gene's mean held-out Pearson into the checkpoint it trains (``cv_pearson``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hespotex.config import LibrarySize, PipelineConfig
from hespotex.encoder.build import load_encoder
from hespotex.encoder.devices import pick_device
from hespotex.encoder.identity import EncoderIdentity, check_same_encoder
from hespotex.encoder.runners import TorchRunner
from hespotex.errors import InputDataError
from hespotex.evaluation.evaluate import TOP_GENES, evaluate_encoded, score_genes, summarise
from hespotex.evaluation.probe import fit_ridge_probe
from hespotex.io.atomic import atomic_path, write_json, write_tsv
from hespotex.io.sections import SectionSource
from hespotex.network.checkpoint import CheckpointMeta
from hespotex.training.data import (
    EncodedSection,
    encode_sections,
    load_sections,
    training_stain,
)
from hespotex.training.fit import fit
from hespotex.training.genes import select_genes, seurat_v3_ranks, shared_genes

logger = logging.getLogger(__name__)

SCORES = ("pearson_all", "pearson_top_hvg")


def fold_plan(section_ids: Sequence[str]) -> list[tuple[str, str, list[str]]]:
    """(test, validation, training) for each fold."""
    if len(section_ids) < 3:
        raise InputDataError(
            "sections sheet", "leave-one-out needs 3 sections or more (test, validation, train)"
        )
    plan = []
    for index, test in enumerate(section_ids):
        rest = [section for section in section_ids if section != test]
        validation = rest[index % len(rest)]
        plan.append((test, validation, [s for s in rest if s != validation]))
    return plan


def ridge_scores(
    sections: dict[str, EncodedSection],
    genes: list[str],
    test: str,
    validation: str,
    training: list[str],
    top_genes: int,
    library_size: LibrarySize = LibrarySize.ALL_GENES,
) -> pd.DataFrame:
    def expression(section_id: str) -> np.ndarray:
        return sections[section_id].section.log_expression(genes, library_size=library_size)

    probe = fit_ridge_probe(
        [sections[section_id].features for section_id in training],
        [expression(section_id) for section_id in training],
        (sections[validation].features, expression(validation)),
    )
    held_out = sections[test]
    return score_genes(
        test,
        genes,
        expression(test),
        probe.predict(held_out.features),
        held_out.section.centres_px,
        top_genes,
    )


def with_cv_scores(meta: CheckpointMeta, path: Path) -> CheckpointMeta:
    """``meta`` with each gene's mean held-out Pearson from a ``hespotex crossval`` run (its
    folder, or its genes.tsv): HESpotEx's rows over every fold and seed that scored the gene;
    None for a gene no fold chose. The run must have used the checkpoint's encoder."""
    path = Path(path)
    table_path = path / "genes.tsv" if path.is_dir() else path
    try:
        table = pd.read_csv(table_path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputDataError(table_path, f"not a crossval genes.tsv: {error}") from None
    missing = {"gene", "pearson", "model"} - set(table.columns)
    if missing:
        raise InputDataError(
            table_path, f"not a crossval genes.tsv: no column(s) {', '.join(sorted(missing))}"
        )
    summary_path = table_path.with_name("summary.json")
    if summary_path.is_file():
        try:
            record = json.loads(summary_path.read_text()).get("encoder_identity")
        except (OSError, ValueError) as error:
            raise InputDataError(summary_path, f"not a crossval summary.json: {error}") from None
        check_same_encoder(
            summary_path,
            EncoderIdentity.from_record(record, summary_path),
            "the checkpoint",
            meta.encoder,
            "run crossval with the encoder you train with",
        )
    held_out = table[table["model"] == "hespotex"].groupby("gene")["pearson"].mean()
    if held_out.empty:
        raise InputDataError(table_path, "no HESpotEx rows to take scores from")
    scores = [
        None
        if gene not in held_out.index or np.isnan(held_out[gene])
        else round(float(held_out[gene]), 4)
        for gene in meta.genes
    ]
    runs = table.loc[table["model"] == "hespotex", ["section", "seed"]].drop_duplicates()
    source = (
        f"mean Pearson on held-out sections in `hespotex crossval` {table_path} "
        f"({runs['section'].nunique()} sections × {runs['seed'].nunique()} seeds; "
        f"{sum(score is not None for score in scores)} of {len(scores)} genes scored)"
    )
    return meta.model_copy(
        update={
            "gene_scores": {**meta.gene_scores, "cv_pearson": scores},
            "gene_score_sources": {**meta.gene_score_sources, "cv_pearson": source},
        }
    )


def _sd(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _mean_sd(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {_sd(values):.3f}"


def summary_tables(folds: pd.DataFrame) -> tuple[dict, list[str]]:
    """Per fold (mean ± sd over seeds) and overall (the mean over folds, then mean ± sd over
    seeds), for HESpotEx, the probe and HESpotEx's lead."""
    for score in SCORES:
        folds[f"lead_{score}"] = folds[f"hespotex_{score}"] - folds[f"ridge_{score}"]
    columns = [f"{who}_{score}" for score in SCORES for who in ("hespotex", "ridge", "lead")]
    per_seed = folds.groupby("seed")[columns].mean()
    overall = {
        column: {"mean": per_seed[column].mean(), "sd": _sd(per_seed[column])} for column in columns
    }
    header = [
        "fold (test / validation)",
        "chosen epoch",
        *(f"{who} {score}" for score in SCORES for who in ("HESpotEx", "ridge", "lead")),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (test, validation), group in folds.groupby(["test", "validation"], sort=False):
        epochs = ", ".join(str(epoch) for epoch in group["chosen_epoch"])
        cells = [_mean_sd(group[column]) for column in columns]
        lines.append(f"| {test} / {validation} | {epochs} | " + " | ".join(cells) + " |")
    cells = [_mean_sd(per_seed[column]) for column in columns]
    lines.append("| **mean over folds** | | " + " | ".join(cells) + " |")
    return overall, lines


def run_crossval(
    sources: Sequence[SectionSource],
    config: PipelineConfig,
    seeds: Sequence[int],
    out_dir: Path,
    top_genes: int = TOP_GENES,
) -> dict:
    sections_list = load_sections(sources, config.training.min_spot_counts)
    runner = TorchRunner(load_encoder(config.encoder), pick_device(config.features.device))
    logger.info("encoder: %s", runner.identity.describe())
    by_id = {section.section_id: section for section in sections_list}
    encodings: dict[str, dict[str, EncodedSection]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    everywhere = shared_genes(sections_list)
    ranks = {section.section_id: seurat_v3_ranks(section, everywhere) for section in sections_list}
    rows, gene_tables, genes_by_fold = [], [], {}
    for test, validation, training in fold_plan(list(by_id)):
        stain = training_stain([by_id[section_id] for section_id in training], config)
        if stain.fingerprint not in encodings:
            encodings[stain.fingerprint] = {
                item.section_id: item
                for item in encode_sections(sections_list, config, runner, stain)
            }
        encoded = encodings[stain.fingerprint]
        genes = select_genes(
            [encoded[section_id].section for section_id in training],
            config.training,
            [encoded[section_id].section.genes for section_id in (validation, test)],
            ranks,
        )
        for seed in seeds:
            seeded = config.model_copy(
                update={"training": config.training.model_copy(update={"seed": seed})}
            )
            logger.info("fold test %s, validation %s, seed %d", test, validation, seed)
            model, meta = fit(
                [encoded[section_id] for section_id in [*training, validation]],
                validation,
                seeded,
                runner.identity,
                genes=genes,
                stain=stain,
            )
            hespotex_table, _ = evaluate_encoded(model, meta, [encoded[test]], None, top_genes)
            ridge_table = ridge_scores(
                encoded, meta.genes, test, validation, training, top_genes, meta.library_size
            )
            genes_by_fold[test] = meta.genes
            row = {
                "test": test,
                "validation": validation,
                "seed": seed,
                "training": ",".join(training),
                "n_genes": len(meta.genes),
                "chosen_epoch": meta.training["chosen_epoch"],
            }
            for who, table in (("hespotex", hespotex_table), ("ridge", ridge_table)):
                summary = summarise(table)
                row.update({f"{who}_{score}": summary[score] for score in SCORES})
                gene_tables.append(table.assign(model=who, seed=seed))
            logger.info(
                "fold %s seed %d: HESpotEx %.4f / %.4f, ridge %.4f / %.4f (all / top %d)",
                test,
                seed,
                row["hespotex_pearson_all"],
                row["hespotex_pearson_top_hvg"],
                row["ridge_pearson_all"],
                row["ridge_pearson_top_hvg"],
                top_genes,
            )
            rows.append(row)
    folds = pd.DataFrame(rows)
    overall, lines = summary_tables(folds)
    write_tsv(out_dir / "folds.tsv", folds)
    write_tsv(out_dir / "genes.tsv", pd.concat(gene_tables, ignore_index=True))
    result = {
        "encoder": runner.identity.describe(),
        "stain_normalisation": config.stain.normalisation.value,
        "encoder_identity": runner.identity.model_dump(mode="json"),
        "seeds": list(seeds),
        "top_genes": top_genes,
        "overall": overall,
        "genes_by_test_section": genes_by_fold,
    }
    write_json(out_dir / "summary.json", result)
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    logger.info(
        "leave-one-section-out, mean ± sd over seeds %s:\n%s", list(seeds), "\n".join(lines)
    )
    return result
