"""Cohort tables at TCGA scale: `hespotex cohort` over 1,000 and 10,000 finished slides.

Writes a synthetic cohort (per slide an ``expression.h5ad`` of random predictions, its
``qc.json`` and a row of the sample sheet; nothing is computed), then times `hespotex
cohort` (summary.tsv plus pseudobulk.tsv, read with dask a window of slides at a time) and
records its peak RSS (``timing.run_timed``). Bounded memory shows as a peak that does not
grow with the number of slides.

    .venv/bin/python benchmarks/pseudobulk_scaling.py --work /tmp/hespotex-cohort

prints a Markdown table (also written to <work>/pseudobulk_scaling.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml
from timing import run_timed, write_table

from hespotex.paths import CohortPaths, SlidePaths

SIZES = (1000, 10000)
SPOTS_PER_SLIDE = 500
GENES = 250


def write_cohort(folder: Path, slides: int, rng: np.random.Generator) -> Path:
    results = folder / "results"
    genes = pd.DataFrame(index=[f"GENE{index:04d}" for index in range(GENES)])
    template = ad.AnnData(
        X=rng.normal(3.0, 1.0, size=(SPOTS_PER_SLIDE, GENES)).astype(np.float32), var=genes
    )
    qc = {
        "spots": SPOTS_PER_SLIDE,
        "tissue_area_mm2": 20.0,
        "mpp": 0.5,
        "mpp_source": "synthetic",
        "total_seconds": 1.0,
        "timings": {},
    }
    rows = ["slide_id\tpath"]
    for index in range(slides):
        slide_id = f"slide{index:05d}"
        paths = SlidePaths(results, slide_id)
        if not paths.qc.exists():
            paths.root.mkdir(parents=True, exist_ok=True)
            template.X += np.float32(0.001)
            template.write_h5ad(paths.expression)
            paths.qc.write_text(json.dumps(qc))
        rows.append(f"{slide_id}\t{slide_id}.svs")
    (folder / "samples.tsv").write_text("\n".join(rows) + "\n")
    config = {
        "samples": str(folder / "samples.tsv"),
        "results": str(results),
        "logs": str(folder / "logs"),
        "encoder": {"architecture": "vit-tiny-32", "weights": "random"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    hespotex = str(Path(sys.executable).parent / "hespotex")
    rng = np.random.default_rng(0)
    lines = [
        "| slides | spots × genes per slide | expression.h5ad on disk | `hespotex cohort` wall "
        "| peak RSS | pseudobulk.tsv |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for slides in args.sizes:
        folder = args.work / f"cohort-{slides}"
        config = write_cohort(folder, slides, rng)
        seconds, peak_mb, _ = run_timed(
            [hespotex, "cohort", "--config", str(config), "--workers", str(args.workers)]
        )
        cohort = CohortPaths(folder / "results")
        table = pd.read_csv(cohort.pseudobulk, sep="\t", index_col=0)
        assert table.shape == (slides, GENES), table.shape
        size_gb = (
            sum(
                SlidePaths(folder / "results", f"slide{index:05d}").expression.stat().st_size
                for index in range(slides)
            )
            / 1e9
        )
        lines.append(
            f"| {slides:,} | {SPOTS_PER_SLIDE:,} × {GENES} | {size_gb:.1f} GB | {seconds:.0f} s "
            f"| {peak_mb:.0f} MB | {table.shape[0]:,} × {table.shape[1]} |"
        )
    write_table(args.work / "pseudobulk_scaling.md", lines)


if __name__ == "__main__":
    main()
