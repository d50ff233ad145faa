"""Cohort tables under ``results/cohort/``: where every slide stands, and pseudo-bulk expression.

``summary.tsv`` has one row per slide of the sheet: ``done`` (with spots, area and per-stage timings
from its ``qc.json``), ``failed`` (the first stage without a finished record and the error its log
ends on) or ``not run``, with its quality control as far as it got (verdict, spots flagged and
dropped, each artefact's share of the tissue spots, ink and fold areas). ``pseudobulk.tsv`` is
slides × genes, each slide's mean predicted expression over its spots (every spot of the grid is a
tissue spot), the quantity the paper compares with bulk RNA-seq. It is computed with dask, a window
of slides at a time, each slide's means read chunk by chunk from its ``expression.h5ad``, so memory
stays bounded however many slides the cohort has."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import dask
import h5py
import numpy as np
import pandas as pd

from hespotex.config import PipelineConfig, read_sample_sheet
from hespotex.errors import InputDataError
from hespotex.io.atomic import atomic_path, write_tsv
from hespotex.paths import CohortPaths, LogPaths, SlidePaths
from hespotex.stage_table import STAGES

logger = logging.getLogger(__name__)

# Rows are read in chunks of at most this many bytes, whatever the slide's size.
READ_CHUNK_BYTES = 64 * 2**20
SLIDES_PER_WINDOW = 256
DONE, FAILED, NOT_RUN = "done", "failed", "not run"


def _last_error(log: Path) -> str:
    """The message of the log's last ERROR line, else its last line (a traceback's end, or
    where a killed job stopped)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "the job stopped before writing anything (killed? out of memory or time?)"
    errors = [line for line in lines if " ERROR " in line]
    if errors:
        message = errors[-1].split(" ERROR ", 1)[1]
        return message.split("]: ", 1)[1] if "]: " in message else message
    return f"no error logged; the log ends with: {lines[-1]}"


QUALITY_COLUMNS = [
    "qc_verdict",
    "spots_flagged",
    "spots_dropped",
    "ink_share",
    "fold_share",
    "blur_share",
    "ink_area_mm2",
    "fold_area_mm2",
]


def quality_columns(paths: SlidePaths) -> dict:
    """The slide's artefacts as far as its stages got: ink and fold areas from the tissue
    stage, the tiles stage's verdict, counts and shares (a slide its QC failed has them too)."""
    row: dict = {}
    if paths.tissue_record.is_file():
        record = json.loads(paths.tissue_record.read_text())
        row["ink_area_mm2"] = round(sum((record.get("ink_area_mm2") or {}).values()), 4)
        row["fold_area_mm2"] = record.get("fold_area_mm2")
    if paths.spot_qc.is_file():
        qc = json.loads(paths.spot_qc.read_text())
        row.update(
            qc_verdict=qc["verdict"], spots_flagged=qc["flagged"], spots_dropped=qc["dropped"]
        )
        row.update({f"{artefact}_share": share for artefact, share in qc["shares"].items()})
    return row


def slide_status(config: PipelineConfig, slide_id: str) -> dict:
    paths = SlidePaths(config.results, slide_id)
    row: dict = {"slide_id": slide_id, "status": NOT_RUN, "failed_stage": "", "reason": ""}
    row.update(quality_columns(paths))
    if paths.qc.is_file():
        qc = json.loads(paths.qc.read_text())
        row["status"] = DONE
        row.update(
            spots=qc["spots"],
            tissue_area_mm2=qc["tissue_area_mm2"],
            mpp=qc["mpp"],
            mpp_source=qc["mpp_source"],
            total_s=qc["total_seconds"],
        )
        row.update({f"{stage}_s": entry["seconds"] for stage, entry in qc["timings"].items()})
        return row
    for stage in STAGES:
        if paths.stage_record(stage).is_file():
            continue
        log = LogPaths(config.logs).stage(stage, slide_id)
        if log.is_file():
            row.update(status=FAILED, failed_stage=stage, reason=_last_error(log))
        break
    return row


def write_summary(config: PipelineConfig, slide_ids: Sequence[str]) -> pd.DataFrame:
    stage_columns = [f"{stage}_s" for stage in STAGES]
    columns = ["slide_id", "status", "failed_stage", "reason", "spots", "tissue_area_mm2"]
    columns += ["mpp", "mpp_source", *QUALITY_COLUMNS, *stage_columns, "total_s"]
    table = pd.DataFrame([slide_status(config, slide_id) for slide_id in slide_ids])
    table = table.reindex(columns=columns)
    write_tsv(CohortPaths(config.results).summary, table)
    return table


def slide_mean_expression(path: Path) -> tuple[list[str], np.ndarray]:
    """Genes and per-gene mean over spots of an ``expression.h5ad``, read in row chunks."""
    import anndata as ad

    try:
        with h5py.File(path, "r") as handle:
            genes = [str(gene) for gene in ad.io.read_elem(handle["var"]).index]
            matrix = handle["X"]
            if isinstance(matrix, h5py.Group):
                return genes, _sparse_means(matrix, len(genes))
            rows = matrix.shape[0]
            if rows == 0:
                raise InputDataError(path, "the expression map has no spots")
            total = np.zeros(matrix.shape[1], dtype=np.float64)
            step = max(1, READ_CHUNK_BYTES // (matrix.shape[1] * matrix.dtype.itemsize))
            for start in range(0, rows, step):
                total += matrix[start : start + step].sum(axis=0, dtype=np.float64)
            return genes, total / rows
    except (OSError, KeyError) as error:
        raise InputDataError(path, f"not a readable expression map: {error}") from None


def _sparse_means(group: h5py.Group, n_genes: int) -> np.ndarray:
    if group.attrs.get("encoding-type") != "csr_matrix":
        raise KeyError(f"X is stored as {group.attrs.get('encoding-type')}, expected csr_matrix")
    rows = int(group.attrs["shape"][0])
    sums = np.bincount(group["indices"][:], weights=group["data"][:], minlength=n_genes)
    return sums / max(rows, 1)


def write_pseudobulk(
    entries: Sequence[tuple[str, Path]], out: Path, workers: int = 2
) -> tuple[int, int]:
    """Write slides × genes mean expression; returns (slides, genes)."""
    genes: list[str] | None = None
    first_path: Path | None = None
    with atomic_path(out) as tmp, tmp.open("w") as handle:
        for start in range(0, len(entries), SLIDES_PER_WINDOW):
            window = entries[start : start + SLIDES_PER_WINDOW]
            tasks = [dask.delayed(slide_mean_expression)(path) for _, path in window]
            means = dask.compute(*tasks, scheduler="threads", num_workers=workers)
            for (slide_id, path), (slide_genes, values) in zip(window, means, strict=True):
                if genes is None:
                    genes, first_path = slide_genes, path
                    handle.write("\t".join(["slide_id", *genes]) + "\n")
                elif slide_genes != genes:
                    raise InputDataError(
                        path,
                        f"predicts other genes than {first_path}: the cohort mixes checkpoints",
                    )
                handle.write(slide_id + "\t" + "\t".join(f"{value:.6g}" for value in values))
                handle.write("\n")
        if genes is None:
            handle.write("slide_id\n")
    return len(entries), len(genes or [])


GALLERY_KINDS = ("quality", "tissue_qc", "heatmaps", "top_patches")


def gallery_images(paths: SlidePaths, kind: str) -> list[Path]:
    if kind == "quality":
        return [paths.quality_picture]
    if kind == "tissue_qc":
        return [paths.tissue_qc]
    return sorted(getattr(paths, kind).glob("*.png"))


def _link(source: Path, target: Path) -> None:
    """A hard link (no second copy of the image), or a copy across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_gallery(config: PipelineConfig, done: Sequence[str], tried: Sequence[str]) -> None:
    """``cohort/gallery/{kind}/{slide}/...``: the QC pictures of every slide that got that far
    (``tried``: those quality control refused above all), and the finished slides' (``done``)
    tissue overlays, heatmaps and top-patch montages, linked in one place so that
    `snakemake --report` can list them as the cohort rule's outputs."""
    cohort = CohortPaths(config.results)
    for kind in GALLERY_KINDS:
        with atomic_path(cohort.gallery(kind)) as tmp:
            tmp.mkdir(parents=True)
            for slide_id in tried if kind == "quality" else done:
                for image in gallery_images(SlidePaths(config.results, slide_id), kind):
                    if image.is_file():
                        _link(image, tmp / slide_id / image.name)


def run_cohort(config: PipelineConfig, workers: int = 2) -> pd.DataFrame:
    slide_ids = list(read_sample_sheet(config.samples))
    summary = write_summary(config, slide_ids)
    done = summary.loc[summary["status"] == DONE, "slide_id"]
    entries = [(slide_id, SlidePaths(config.results, slide_id).expression) for slide_id in done]
    slides, genes = write_pseudobulk(entries, CohortPaths(config.results).pseudobulk, workers)
    write_gallery(config, list(done), slide_ids)
    counts = summary["status"].value_counts()
    logger.info(
        "%d slide(s) done, %d failed, %d not run; pseudo-bulk of %d slide(s) × %d genes in %s",
        counts.get(DONE, 0),
        counts.get(FAILED, 0),
        counts.get(NOT_RUN, 0),
        slides,
        genes,
        CohortPaths(config.results).root,
    )
    return summary


def failure_report(summary: Path, shown: int = 20) -> str | None:
    """The failed slides of a summary table, with stage and cause, for the end of a run; None
    when none failed."""
    if not Path(summary).is_file():
        return None
    table = pd.read_csv(summary, sep="\t", dtype=str, keep_default_na=False)
    failed = table[table["status"] == FAILED]
    if failed.empty:
        return None
    lines = [
        f"{len(failed)} of {len(table)} slide(s) failed (rerun to retry them; {summary}):",
        *(
            f"  {row.slide_id}: {row.failed_stage}: {row.reason}"
            for row in failed.head(shown).itertuples()
        ),
    ]
    if len(failed) > shown:
        lines.append(f"  ... and {len(failed) - shown} more")
    return "\n".join(lines)
