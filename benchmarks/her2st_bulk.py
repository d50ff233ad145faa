"""The TCGA-style bulk check on real data: the four HER2ST sections through the pipeline.

1. `hespotex train` on sections C2 and C3 (epoch chosen on C4) of ../shared/data/her2st, with
   the weights-free stain-stats encoder by default (no pretrained weights can be downloaded
   here; `--architecture vit-b-32 --weights quiltnet.bin` uses a local weights file);
2. the pipeline (`snakemake`, the real workflow) on the four H&E images as slides (mpp 0.69
   from the sheet: the JPEGs carry no resolution), giving results/cohort/pseudobulk.tsv;
3. the measured pseudo-bulk of each section from its spot counts: the mean over its spots of
   log1p CPM, the quantity the pipeline predicts;
4. `hespotex evaluate-bulk` of predicted against measured.

With four sections a per-gene correlation across sections rests on four points, so the
per-section correlation across genes is the informative figure; it is shown beside a baseline
that knows nothing of the image: the mean measured profile of the training sections.

    .venv/bin/python benchmarks/her2st_bulk.py --work /tmp/hespotex-her2st-bulk
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from hespotex.evaluation.bulk import column_correlation
from hespotex.network.checkpoint import read_checkpoint_meta
from hespotex.paths import CohortPaths

REPO = Path(__file__).resolve().parents[1]
HER2ST = (REPO.parent / "shared" / "data" / "her2st").resolve()
SECTIONS = ("B4", "C2", "C3", "C4")
TRAINING = ("C2", "C3")
VALIDATION = "C4"
HER2ST_MPP = 0.69


def image_of(section: str) -> Path:
    return next((HER2ST / section).glob("*.jpg"))


def measured_pseudobulk(genes: list[str]) -> pd.DataFrame:
    rows = {}
    for section in SECTIONS:
        counts = pd.read_csv(HER2ST / section / "counts.tsv.gz", sep="\t", index_col=0)
        values = counts.to_numpy(dtype=np.float64)
        totals = values.sum(axis=1, keepdims=True)
        # CPM + log1p, as hespotex.sections.Section.log_expression normalises training data.
        scale = np.divide(1e6, totals, out=np.zeros_like(totals), where=totals > 0)
        normalised = np.log1p(values * scale)
        profile = pd.Series(normalised.mean(axis=0), index=counts.columns)
        # The count tables leave out genes without a single UMI in the section.
        rows[section] = profile.reindex(genes, fill_value=0.0)
    return pd.DataFrame(rows).T.rename_axis("sample_id")


def run(command: list[str], log: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with log.open("w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--architecture", default="stain-stats", help="e.g. vit-b-32")
    parser.add_argument("--weights", help="local weights file (QuiltNet), for vit-b-32")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent

    sheet = ["section_id\timage\tcounts\tspots\tmpp"]
    for section in (*TRAINING, VALIDATION):
        folder = HER2ST / section
        sheet.append(
            f"{section}\t{image_of(section)}\t{folder / 'counts.tsv.gz'}\t"
            f"{folder / 'spots.tsv'}\t{HER2ST_MPP}"
        )
    (work / "sections.tsv").write_text("\n".join(sheet) + "\n")
    samples = ["slide_id\tpath\tmpp"]
    samples += [f"{section}\t{image_of(section)}\t{HER2ST_MPP}" for section in SECTIONS]
    (work / "samples.tsv").write_text("\n".join(samples) + "\n")
    checkpoint = work / f"her2st-{args.architecture}.safetensors"
    encoder = {"architecture": args.architecture}
    if args.weights:
        encoder["weights"] = str(Path(args.weights).resolve())
    config = {
        "samples": str(work / "samples.tsv"),
        "results": str(work / "results"),
        "logs": str(work / "logs"),
        "encoder": encoder,
        "decode": {"checkpoint": str(checkpoint)},
        "training": {"n_genes": 250, "gate_epochs": 300, "epochs": 200, "patience": 30},
    }
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    if not checkpoint.exists():
        run(
            [str(bin_dir / "hespotex"), "train", "--config", str(config_path), "--sections",
             str(work / "sections.tsv"), "--validation", VALIDATION, "--out", str(checkpoint)],
            work / "train.log",
        )  # fmt: skip
    run(
        [str(bin_dir / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
         str(work), "--configfile", str(config_path), "--cores", "2"],
        work / "snakemake.log",
    )  # fmt: skip
    genes = read_checkpoint_meta(checkpoint).genes
    measured = measured_pseudobulk(genes)
    measured.to_csv(work / "measured_pseudobulk.tsv", sep="\t")
    evaluation = work / "evaluation"
    run(
        [str(bin_dir / "hespotex"), "evaluate-bulk", "--pseudobulk",
         str(CohortPaths(work / "results").pseudobulk), "--bulk",
         str(work / "measured_pseudobulk.tsv"), "--bulk-is-log", "--out", str(evaluation)],
        work / "evaluate.log",
    )  # fmt: skip
    summary = json.loads((evaluation / "summary.json").read_text())
    per_sample = pd.read_csv(evaluation / "samples.tsv", sep="\t", index_col="sample_id")
    training_mean = measured.loc[list(TRAINING)].mean()
    baseline = column_correlation(
        np.tile(training_mean.to_numpy()[:, None], (1, len(SECTIONS))),
        measured.T.to_numpy(),
    )
    roles = {"B4": "held out (patient B)", VALIDATION: "epoch selection", "C2": "training"}
    roles["C3"] = "training"
    lines = [
        "| section | role | Pearson across genes, predicted | Spearman, predicted "
        "| Pearson, training-mean baseline |",
        "|---|---|---:|---:|---:|",
    ]
    for index, section in enumerate(SECTIONS):
        lines.append(
            f"| {section} | {roles[section]} | {per_sample.loc[section, 'pearson']:.3f} "
            f"| {per_sample.loc[section, 'spearman']:.3f} | {baseline[index]:.3f} |"
        )
    lines.append("")
    lines.append(
        f"{summary['genes']} genes; per gene across the 4 sections: Spearman median "
        f"{summary['gene_spearman_median']}, Pearson median {summary['gene_pearson_median']}."
    )
    table = "\n".join(lines)
    (work / "her2st_bulk.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
