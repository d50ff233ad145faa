"""Gene by gene: is what ``best`` serves ever worse than the probe, beyond seed noise?

Reads the ``genes.tsv`` of one or more ``hespotex crossval`` runs. For each held-out section
and gene: the mean over seeds of the served model's Pearson minus the probe's, and the seed
noise, the sd over seeds of HESpotEx's Pearson for that gene. A gene-fold is *worse* when the
served model trails the probe by more than twice that noise (and by more than 0.01). Prints,
per run and gene set, how many gene-folds there are, how many are worse, how many better, and
the mean difference. Also the same for a model named with ``--served`` (e.g. ``ensemble``).

    .venv/bin/python benchmarks/served_genes.py /tmp/cv-efficientnet-lite0 [--served best]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

MIN_GAP = 0.01


def gene_fold_table(run: Path, served: str) -> pd.DataFrame:
    genes = pd.read_csv(run / "genes.tsv", sep="\t")
    wide = genes.pivot_table(
        index=["section", "gene", "seed"], columns="model", values="pearson"
    ).reset_index()
    per_gene = wide.groupby(["section", "gene"]).agg(
        served=(served, "mean"), probe=("probe", "mean"), noise=("hespotex", "std")
    )
    per_gene["difference"] = per_gene["served"] - per_gene["probe"]
    per_gene["noise"] = per_gene["noise"].fillna(0.0)
    sets = genes.drop_duplicates(["section", "gene"]).set_index(["section", "gene"])
    for column in [column for column in genes.columns if column.startswith("in_")]:
        per_gene[column] = sets[column].reindex(per_gene.index).astype(bool)
    return per_gene.dropna(subset=["difference"])


def report(run: Path, served: str) -> list[str]:
    table = gene_fold_table(run, served)
    summary = json.loads((run / "summary.json").read_text())
    threshold = (2 * table["noise"]).clip(lower=MIN_GAP)
    table["worse"] = table["difference"] < -threshold
    table["better"] = table["difference"] > threshold
    lines = [f"{run} ({summary.get('encoder', '?')}, preset {summary.get('preset')}): {served}"]
    subsets = {"all": table}
    subsets.update(
        {
            column.removeprefix("in_"): table[table[column]]
            for column in table.columns
            if column.startswith("in_")
        }
    )
    for name, subset in subsets.items():
        lines.append(
            f"  {name}: {len(subset)} gene-folds, {int(subset['worse'].sum())} worse than the "
            f"probe beyond 2 × seed sd ({subset['worse'].mean():.1%}), "
            f"{int(subset['better'].sum())} better ({subset['better'].mean():.1%}), "
            f"mean {served} − probe {subset['difference'].mean():+.4f}, "
            f"median seed sd {subset['noise'].median():.4f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="hespotex crossval output folders")
    parser.add_argument("--served", default="best", help="the model compared with the probe")
    args = parser.parse_args()
    for run in args.runs:
        print("\n".join(report(run, args.served)))


if __name__ == "__main__":
    main()
