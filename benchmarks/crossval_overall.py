"""The overall rows of several ``hespotex crossval`` runs in one Markdown table.

For each run folder (its ``summary.json``) and gene set: the encoder, the preset, the seeds,
each model's mean Pearson over folds and its lead over the probe, mean ± sd over seeds. This
is the table "Every encoder and preset measured" of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/crossval_overall.py /tmp/cv-efficientnet-lite0 /tmp/cv-stain-stats
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hespotex.config import RANDOM_WEIGHTS
from hespotex.encoder.identity import NO_WEIGHTS
from hespotex.evaluation.crossval import GENE_SETS, LEADS, MODELS


def cell(overall: dict, name: str) -> str:
    figure = overall[name]
    return f"{figure['mean']:.3f} ± {figure['sd']:.3f}"


def rows(run: Path) -> list[str]:
    summary = json.loads((run / "summary.json").read_text())
    overall = summary["overall"]
    seeds = ", ".join(str(seed) for seed in summary["seeds"])
    identity = summary["encoder_identity"]
    weights = {NO_WEIGHTS: "no weights", RANDOM_WEIGHTS: "random weights"}.get(
        identity["weights"], "pretrained"
    )
    label = f"{identity['architecture']} ({weights}), {summary['preset']}"
    return [
        f"| {label} | {gene_set} | {seeds} | "
        + " | ".join(cell(overall, f"{model.value}_{gene_set}") for model in MODELS)
        + " | "
        + " | ".join(cell(overall, f"lead_{model.value}_{gene_set}") for model in LEADS)
        + " |"
        for gene_set in GENE_SETS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="hespotex crossval output folders")
    args = parser.parse_args()
    header = ["encoder, preset", "gene set", "seeds", *(model.value for model in MODELS)]
    header += [f"{model.value} − probe" for model in LEADS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for run in args.runs:
        print("\n".join(rows(run)))


if __name__ == "__main__":
    main()
