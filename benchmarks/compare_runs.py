"""Are two runs' outputs the same? For a change that must not change behaviour (a refactor):
run the demo on the commit before and on the change, then compare the two folders.

Compares, slide by slide, what a user reads: ``expression.h5ad`` (X, obs, var, obsm exactly),
``spots.tsv`` and ``spots_dropped.tsv``, ``tissue.json`` and ``qc/spot_qc.json`` (less the
version), ``qc.json`` (less times, hosts, memory, dates, paths and versions), the PNG masks
pixel by pixel, and the cohort's ``summary.tsv`` (less the time columns) and ``pseudobulk.tsv``.
Also the checkpoints when both are given. Prints one line per file and a last line
``identical: N files, different: M``; exits 1 when anything differs.

    .venv/bin/python benchmarks/compare_runs.py BEFORE/results AFTER/results \\
        [--checkpoints BEFORE/demo/model.safetensors AFTER/demo/model.safetensors]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# Fields that differ between two runs of the same code: when and where it ran, and how long.
VOLATILE = {
    "timings",
    "total_seconds",
    "finished",
    "host",
    "peak_rss_mb",
    "hespotex_version",
    "slide_path",
    "created",
    "results",
}
TIME_COLUMNS = ("total_s", "tissue_s", "tiles_s", "features_s", "graph_s", "decode_s", "outputs_s")


def _stable(value):
    if isinstance(value, dict):
        return {key: _stable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [_stable(item) for item in value]
    return value


def same_json(before: Path, after: Path) -> bool:
    return _stable(json.loads(before.read_text())) == _stable(json.loads(after.read_text()))


def same_table(before: Path, after: Path) -> bool:
    old, new = (pd.read_csv(path, sep="\t", dtype=str) for path in (before, after))
    drop = [column for column in TIME_COLUMNS if column in old.columns]
    return old.drop(columns=drop).equals(new.drop(columns=drop, errors="ignore"))


def same_png(before: Path, after: Path) -> bool:
    from PIL import Image

    return np.array_equal(np.asarray(Image.open(before)), np.asarray(Image.open(after)))


def same_h5ad(before: Path, after: Path) -> bool:
    import anndata as ad

    old, new = ad.read_h5ad(before), ad.read_h5ad(after)
    return (
        np.array_equal(np.asarray(old.X), np.asarray(new.X))
        and old.obs.equals(new.obs)
        and old.var.equals(new.var)
        and old.obsm.keys() == new.obsm.keys()
        and all(np.array_equal(old.obsm[key], new.obsm[key]) for key in old.obsm)
    )


def same_bytes(before: Path, after: Path) -> bool:
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in (before, after)]
    return digests[0] == digests[1]


COMPARED = {
    "expression.h5ad": same_h5ad,
    "spots.tsv": same_table,
    "spots_dropped.tsv": same_table,
    "tissue.json": same_json,
    "qc.json": same_json,
    "qc/spot_qc.json": same_json,
    "tissue_mask.png": same_png,
    "artifacts_mask.png": same_png,
    "cohort/summary.tsv": same_table,
    "cohort/pseudobulk.tsv": same_table,
}


def compare(before: Path, after: Path) -> list[tuple[str, bool]]:
    """(file, identical) for every compared file of ``before``; a file ``after`` lacks is
    different."""
    outcomes = []
    slides = sorted(path.name for path in before.iterdir() if (path / "tissue.json").is_file())
    for name, check in COMPARED.items():
        relative = [Path(name)] if name.startswith("cohort/") else [Path(s, name) for s in slides]
        for path in relative:
            if not (before / path).is_file():
                continue
            identical = (after / path).is_file() and check(before / path, after / path)
            outcomes.append((str(path), identical))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--checkpoints", type=Path, nargs=2)
    args = parser.parse_args()
    outcomes = compare(args.before, args.after)
    if args.checkpoints:
        outcomes.append(("checkpoint", same_bytes(*args.checkpoints)))
    for path, identical in outcomes:
        print(f"{'identical' if identical else 'DIFFERENT'}  {path}")
    different = sum(not identical for _, identical in outcomes)
    print(f"identical: {len(outcomes) - different} files, different: {different}")
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
