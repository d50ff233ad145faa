"""`hespotex crossval`: nested leave-one-section-out, HESpotEx against its linear probe.

Each fold holds one section out for testing; of the others, one (the next section in the
sheet after the test one, cyclically) is the inner validation section and the rest train.
Every choice is made without the test section: the genes and gene sets (training sections),
HESpotEx's epoch, the probe's ridge strength and, for ``best``, the model served per gene
(validation section). The test section is read only to score. Scored on it with the same
genes, from the same frozen features: HESpotEx, the probe (HEST-Benchmark's protocol), their
mean (``ensemble``) and ``best`` per gene, over every predicted gene and over each gene set
(the genes of highest pooled variance, the marker panel). Features are encoded once per section
for all folds and seeds; with stain normalisation to the training sections' stain
(``stain.target: checkpoint``) once per fold, each normalised to that fold's training
sections' stain as its checkpoint would be. Written: ``folds.tsv`` (one row per fold and seed,
with its choices), ``genes.tsv`` (per gene and model), ``summary.json`` and ``summary.md`` (per
gene set, per fold and overall, mean ± sd over seeds), and ``runs/<test>.seed<seed>/`` as each
fold and seed is scored: rerun, a killed crossval goes on from there, and more seeds can be
added to a finished one. ``hespotex train --gene-scores`` copies each gene's mean held-out
Pearson of each model into the checkpoint it trains (``cv_pearson``, ``probe_cv_pearson``,
``ensemble_cv_pearson``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hespotex.config import PipelineConfig, ServedModel
from hespotex.encoder.build import load_encoder
from hespotex.encoder.devices import pick_device
from hespotex.encoder.identity import EncoderIdentity, check_same_encoder
from hespotex.encoder.runners import TorchRunner
from hespotex.encoder.stain import StainSetting
from hespotex.errors import InputDataError
from hespotex.evaluation.evaluate import evaluate_encoded, summarise
from hespotex.io.atomic import atomic_path, write_json, write_tsv
from hespotex.io.sections import Section, SectionSource
from hespotex.network.checkpoint import SERVABLE, CheckpointMeta, score_name
from hespotex.training.data import (
    EncodedSection,
    encode_sections,
    load_sections,
    training_stain,
)
from hespotex.training.fit import fit
from hespotex.training.genes import (
    MARKERS,
    TOP_VARIANCE,
    select_genes,
    seurat_v3_ranks,
    shared_genes,
)
from hespotex.training.resume import fingerprint

logger = logging.getLogger(__name__)

MODELS = (*SERVABLE, ServedModel.BEST)
GENE_SETS = ("all", TOP_VARIANCE, MARKERS)
RUNS = "runs"
LEADS = (ServedModel.HESPOTEX, ServedModel.ENSEMBLE, ServedModel.BEST)


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


def with_cv_scores(meta: CheckpointMeta, path: Path) -> CheckpointMeta:
    """``meta`` with each gene's mean held-out Pearson of each model from a ``hespotex
    crossval`` run (its folder, or its genes.tsv): the rows of every fold and seed that scored
    the gene; None for a gene no fold chose. The run must have used the checkpoint's encoder."""
    path = Path(path)
    table_path = path / "genes.tsv" if path.is_dir() else path
    try:
        table = pd.read_csv(table_path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputDataError(table_path, f"not a crossval genes.tsv: {error}") from None
    missing = {"gene", "pearson", "model", "section", "seed"} - set(table.columns)
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
    if not (table["model"] == ServedModel.HESPOTEX.value).any():
        raise InputDataError(table_path, "no HESpotEx rows to take scores from")
    scores, sources = dict(meta.gene_scores), dict(meta.gene_score_sources)
    for model in SERVABLE:
        rows = table[table["model"] == model.value]
        if rows.empty:
            continue
        held_out = rows.groupby("gene")["pearson"].mean()
        values = [
            None
            if gene not in held_out.index or np.isnan(held_out[gene])
            else round(float(held_out[gene]), 4)
            for gene in meta.genes
        ]
        runs = rows[["section", "seed"]].drop_duplicates()
        name = score_name(model, "cv_pearson")
        scores[name] = values
        sources[name] = (
            f"{model.value}: mean Pearson on held-out sections in `hespotex crossval` "
            f"{table_path} ({runs['section'].nunique()} sections × {runs['seed'].nunique()} "
            f"seeds; {sum(value is not None for value in values)} of {len(values)} genes scored)"
        )
    return meta.model_copy(update={"gene_scores": scores, "gene_score_sources": sources})


def _sd(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _mean_sd(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {_sd(values):.3f}"


def with_leads(folds: pd.DataFrame) -> pd.DataFrame:
    """``lead_{model}_{set}``: the model's mean Pearson minus the probe's."""
    leads = {
        f"lead_{model.value}_{gene_set}": folds[f"{model.value}_{gene_set}"]
        - folds[f"probe_{gene_set}"]
        for model in LEADS
        for gene_set in GENE_SETS
    }
    return folds.assign(**leads)


def summary_tables(folds: pd.DataFrame) -> tuple[dict, list[str]]:
    """Per gene set, per fold (mean ± sd over seeds) and overall (the mean over folds, then
    mean ± sd over seeds): each model's mean Pearson and its lead over the probe."""
    folds = with_leads(folds)
    columns = [
        *(f"{model.value}_{gene_set}" for model in MODELS for gene_set in GENE_SETS),
        *(f"lead_{model.value}_{gene_set}" for model in LEADS for gene_set in GENE_SETS),
    ]
    per_seed = folds.groupby("seed")[columns].mean()
    overall = {
        column: {"mean": per_seed[column].mean(), "sd": _sd(per_seed[column])} for column in columns
    }
    lines = []
    for gene_set in GENE_SETS:
        shown = [
            *(f"{model.value}_{gene_set}" for model in MODELS),
            *(f"lead_{model.value}_{gene_set}" for model in LEADS),
        ]
        header = [
            "fold (test / validation)",
            "chosen epoch",
            *(model.value for model in MODELS),
            *(f"{model.value} − probe" for model in LEADS),
        ]
        size = int(folds[f"n_{gene_set}"].mean()) if f"n_{gene_set}" in folds else None
        lines += [
            f"**{gene_set}**" + (f" (≈ {size} genes)" if size else ""),
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for (test, validation), group in folds.groupby(["test", "validation"], sort=False):
            epochs = ", ".join(str(epoch) for epoch in group["chosen_epoch"])
            cells = [_mean_sd(group[column]) for column in shown]
            lines.append(f"| {test} / {validation} | {epochs} | " + " | ".join(cells) + " |")
        cells = [_mean_sd(per_seed[column]) for column in shown]
        lines += ["| **mean over folds** | | " + " | ".join(cells) + " |", ""]
    return overall, lines


Encodings = Callable[[StainSetting], dict[str, EncodedSection]]
FoldResult = tuple[dict, pd.DataFrame, dict[str, list[str]]]


# The modules a fold's scores come from: a record scored by other code is not reused.
SCORING_SOURCES = ("config.py", "metrics.py", "network", "training", "evaluation")


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def code_digest(root: Path, names: Sequence[str]) -> str:
    """A digest of the Python code under ``root/<name>`` (files or folders) that ignores
    comments, docstrings and layout: rewording them keeps the records hours of CPU made."""
    digest = hashlib.sha256()
    for name in names:
        path = root / name
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            tree = _without_docstrings(ast.parse(source.read_bytes(), filename=str(source)))
            digest.update(source.relative_to(root).as_posix().encode())
            digest.update(ast.dump(tree).encode())
    return digest.hexdigest()


def scoring_code_digest() -> str:
    return code_digest(Path(__file__).resolve().parents[1], SCORING_SOURCES)


def fold_fingerprint(
    config: PipelineConfig,
    genes: list[str],
    fold: Sequence[EncodedSection],
    stain: StainSetting,
    code: str,
) -> str:
    """What one fold and seed's scores depend on: the whole config (seed included), the genes,
    each section's role, features, nucleus counts, counts with their gene and spot names, spot
    centres, the stain target, and ``code`` (``scoring_code_digest``)."""
    digest = hashlib.sha256(fingerprint(config, genes, fold).encode())
    digest.update(config.model_dump_json().encode())
    digest.update(f"{stain.fingerprint} {code}".encode())
    for encoded in fold:
        section = encoded.section
        digest.update(json.dumps([list(section.genes), list(section.spot_ids)]).encode())
        digest.update(np.asarray(section.counts.shape).tobytes())
        parts = [section.counts.data, section.counts.indices, section.counts.indptr]
        parts += [section.centres_px]
        if encoded.nucleus_counts is not None:
            parts.append(encoded.nucleus_counts)
        for part in parts:
            digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


class FoldRecord:
    """One fold and seed's scores, kept in ``runs/<test>.seed<seed>/`` as soon as they are
    known, so a rerun of a killed crossval (hours on CPU) skips what it already scored. A record
    of other settings, data or code (another fingerprint) or an unreadable one is scored
    afresh."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder = folder
        self.fingerprint = fingerprint

    def load(self) -> FoldResult | None:
        record_path = self.folder / "record.json"
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text())
            fingerprint_kept = record.get("fingerprint")
            result = dict(record["row"]), record["gene_sets"]
            table = pd.read_csv(
                self.folder / "genes.tsv",
                sep="\t",
                # Names stay text (a gene may be called NA, a section 01); floats come back
                # to the last bit, as a fold scored afresh has them.
                dtype={"section": str, "gene": str, "model": str},
                keep_default_na=False,
                na_values=[""],
                float_precision="round_trip",
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning("%s is unreadable (%s); scoring the fold afresh", self.folder, error)
            return None
        if fingerprint_kept != self.fingerprint:
            logger.warning(
                "%s was scored with other settings, data or code; scoring the fold afresh",
                self.folder,
            )
            return None
        logger.info("fold and seed already scored: %s", self.folder)
        row, gene_sets = result
        return row, table, gene_sets

    def save(self, result: FoldResult) -> None:
        row, table, gene_sets = result
        with atomic_path(self.folder) as tmp:
            tmp.mkdir()
            write_tsv(tmp / "genes.tsv", table)
            write_json(
                tmp / "record.json",
                # The row as pairs: its column order survives the sorted keys.
                {"fingerprint": self.fingerprint, "row": list(row.items()), "gene_sets": gene_sets},
            )


def _score_fold(
    encoded: dict[str, EncodedSection],
    roles: tuple[str, str, list[str]],
    config: PipelineConfig,
    encoder: EncoderIdentity,
    genes: list[str],
    stain: StainSetting,
) -> FoldResult:
    """Train on the fold's training sections (epoch and ridge strength chosen on its validation
    section), then score every model on its test section."""
    test, validation, training = roles
    seed = config.training.seed
    checkpoint = fit(
        [encoded[section_id] for section_id in [*training, validation]],
        validation,
        config,
        encoder,
        genes=genes,
        stain=stain,
    )
    meta = checkpoint.meta
    table, _ = evaluate_encoded(checkpoint, [encoded[test]], None, ServedModel.BEST)
    served = meta.served_models(ServedModel.BEST, "the fold's checkpoint")
    row = {
        "test": test,
        "validation": validation,
        "seed": seed,
        "training": ",".join(training),
        "n_all": len(meta.genes),
        **{f"n_{name}": len(members) for name, members in meta.gene_sets.items()},
        "genes": ",".join(meta.genes),
        "chosen_epoch": meta.training["chosen_epoch"],
        "probe_alpha": meta.training["probe_alpha"],
        **{f"served_{model.value}": served.count(model) for model in SERVABLE},
        # What settings may be compared by: the inner validation section's scores
        # (optimistic, as it chose the epoch and strength), never the test section's.
        **{
            f"validation_{model.value}": float(
                np.nanmean(
                    np.array(meta.gene_scores[score_name(model, "validation_pearson")], dtype=float)
                )
            )
            for model in SERVABLE
        },
    }
    for model in MODELS:
        summary = summarise(table[table["model"] == model.value])
        row.update(
            {f"{model.value}_{gene_set}": summary[f"pearson_{gene_set}"]
             for gene_set in GENE_SETS}
        )  # fmt: skip
    logger.info(
        "fold %s seed %d, mean Pearson (all / top variance / markers): %s",
        test,
        seed,
        "; ".join(
            f"{model.value} "
            + " / ".join(f"{row[f'{model.value}_{gene_set}']:.4f}" for gene_set in GENE_SETS)
            for model in MODELS
        ),
    )
    return row, table.assign(seed=seed), {"genes": meta.genes, **meta.gene_sets}


def run_crossval(
    sources: Sequence[SectionSource],
    config: PipelineConfig,
    seeds: Sequence[int],
    out_dir: Path,
) -> dict:
    sections = load_sections(sources, config.training.min_spot_counts)
    runner = TorchRunner(load_encoder(config.encoder), pick_device(config.features.device))
    logger.info("encoder: %s", runner.identity.describe())
    cache: dict[str, dict[str, EncodedSection]] = {}

    def encodings(stain: StainSetting) -> dict[str, EncodedSection]:
        if stain.fingerprint not in cache:
            cache[stain.fingerprint] = {
                item.section_id: item for item in encode_sections(sections, config, runner, stain)
            }
        return cache[stain.fingerprint]

    return crossval_sections(sections, encodings, runner.identity, config, seeds, out_dir)


def crossval_sections(
    sections: Sequence[Section],
    encodings: Encodings,
    encoder: EncoderIdentity,
    config: PipelineConfig,
    seeds: Sequence[int],
    out_dir: Path,
) -> dict:
    """The folds over already loaded sections, encoded by ``encodings`` (per stain target)."""
    by_id = {section.section_id: section for section in sections}
    out_dir.mkdir(parents=True, exist_ok=True)
    everywhere = shared_genes(sections)
    ranks = {section.section_id: seurat_v3_ranks(section, everywhere) for section in sections}
    folds_planned = []
    for test, validation, training in fold_plan(list(by_id)):
        stain = training_stain([by_id[section_id] for section_id in training], config)
        encoded = encodings(stain)
        genes = select_genes(
            [encoded[section_id].section for section_id in training],
            config.training,
            [encoded[section_id].section.genes for section_id in (validation, test)],
            ranks,
        )
        folds_planned.append(((test, validation, training), stain, encoded, genes))
    code = scoring_code_digest()
    results: dict[tuple[str, int], FoldResult] = {}
    # Seed by seed, so a run stopped part-way has whole seeds to summarise (rerun with those).
    for seed in seeds:
        seeded = config.model_copy(
            update={"training": config.training.model_copy(update={"seed": seed})}
        )
        for roles, stain, encoded, genes in folds_planned:
            test, validation, training = roles
            fold = [encoded[section_id] for section_id in [*training, validation, test]]
            record = FoldRecord(
                out_dir / RUNS / f"{test}.seed{seed}",
                fold_fingerprint(seeded, genes, fold, stain, code),
            )
            scored = record.load()
            if scored is None:
                logger.info("fold test %s, validation %s, seed %d", test, validation, seed)
                scored = _score_fold(encoded, roles, seeded, encoder, genes, stain)
                record.save(scored)
            results[test, seed] = scored
    ordered = [results[roles[0], seed] for roles, *_ in folds_planned for seed in seeds]
    rows = [row for row, _, _ in ordered]
    gene_tables = [table for _, table, _ in ordered]
    genes_by_fold = {row["test"]: gene_sets for row, _, gene_sets in ordered}
    folds = pd.DataFrame(rows)
    overall, lines = summary_tables(folds)
    write_tsv(out_dir / "folds.tsv", folds)
    write_tsv(out_dir / "genes.tsv", pd.concat(gene_tables, ignore_index=True))
    result = {
        "encoder": encoder.describe(),
        "stain_normalisation": config.stain.normalisation.value,
        "encoder_identity": encoder.model_dump(mode="json"),
        "preset": config.training.preset,
        "served_by_default": config.decode.serve.value,
        "seeds": list(seeds),
        "overall": overall,
        "genes_by_test_section": genes_by_fold,
    }
    write_json(out_dir / "summary.json", result)
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    logger.info(
        "nested leave-one-section-out, mean ± sd over seeds %s:\n%s", list(seeds), "\n".join(lines)
    )
    return result
