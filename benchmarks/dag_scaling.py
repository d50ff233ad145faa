"""How the workflow's DAG and its SLURM submissions grow with the cohort: 100 to 10,000 slides.

For synthetic sample sheets of N slides (every row the same small real slide, so nothing is
computed), measures a dry run (`snakemake -n`) of the real workflow with the SLURM profile's
grouping: wall time and peak RSS (`/usr/bin/time -v`), jobs, and the submissions it would make
(group jobs plus ungrouped jobs, per group). Next to it, the same figures for a bare five-rule
Snakefile with one job per slide per rule (the issue's reference point). Needs the demo
checkpoint (`make demo` builds it; only its metadata is read).

    .venv/bin/python benchmarks/dag_scaling.py --work /tmp/hespotex-dag

prints a Markdown table (also written to <work>/dag_scaling.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml
from timing import run_timed, write_table

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
SIZES = (100, 1000, 10000)

BARE_SNAKEFILE = """
SLIDES = [line.split("\\t")[0] for line in open(config["samples"]).read().splitlines()[1:]]

rule all:
    input: expand("out/{slide}/expression.h5ad", slide=SLIDES)

rule tissue:
    input: config["slide"]
    output: "out/{slide}/tissue.json"
    shell: "touch {output}"

rule tiles:
    input: "out/{slide}/tissue.json"
    output: "out/{slide}/spots.tsv"
    shell: "touch {output}"

rule features:
    input: "out/{slide}/spots.tsv"
    output: "out/{slide}/features.zarr"
    shell: "touch {output}"

rule graph:
    input: "out/{slide}/features.zarr"
    output: "out/{slide}/graph.zarr"
    shell: "touch {output}"

rule decode:
    input: "out/{slide}/graph.zarr"
    output: "out/{slide}/expression.h5ad"
    shell: "touch {output}"
"""


def count_submissions(dry_run_output: str) -> tuple[int, dict[str, int]]:
    """Jobs, and the submissions a dry run announces: group jobs per group, and top-level
    (ungrouped) jobs under "-"."""
    jobs = int(re.search(r"^total\s+(\d+)", dry_run_output, re.MULTILINE)[1])
    submissions: dict[str, int] = {}
    for match in re.finditer(
        r"^\[[^\]]+\] (?:Group job (\S+)|(rule|localrule) \S+:)", dry_run_output, re.M
    ):
        if match[1]:
            submissions[match[1]] = submissions.get(match[1], 0) + 1
        elif match[2] == "rule":
            submissions["-"] = submissions.get("-", 0) + 1
    return jobs, submissions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-dag"))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    snakemake = str(Path(sys.executable).parent / "snakemake")
    checkpoint = REPO / "demo" / "model.safetensors"
    if not checkpoint.is_file():
        sys.exit(f"{checkpoint} is missing: run `make demo` first")
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    (work / "Snakefile").write_text(BARE_SNAKEFILE)

    lines = [
        "| slides | workflow | jobs | submissions (per group) | dry run (s) | `-n --quiet` (s) "
        "| peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        sheet = work / f"samples-{size}.tsv"
        rows = [f"slide{index:06d}\t{SLIDE}\t" for index in range(size)]
        sheet.write_text("slide_id\tpath\tmpp\n" + "\n".join(rows) + "\n")
        config = work / f"config-{size}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    **demo,
                    "samples": str(sheet),
                    "results": str(work / f"results-{size}"),
                    "logs": str(work / f"logs-{size}"),
                    "decode": {"checkpoint": str(checkpoint)},
                }
            )
        )
        ours = [
            snakemake,
            "-n",
            "--profile",
            "workflow/profiles/slurm",
            "--configfile",
            str(config),
        ]
        seconds, peak_mb, output = run_timed(ours, REPO)
        quiet_seconds, _, _ = run_timed([*ours, "--quiet"], REPO)
        jobs, groups = count_submissions(output)
        per_group = ", ".join(f"{name} {count:,}" for name, count in sorted(groups.items()))
        lines.append(
            f"| {size:,} | HESpotEx, SLURM profile | {jobs:,} | {sum(groups.values()):,} "
            f"({per_group}) | {seconds:.1f} | {quiet_seconds:.1f} | {peak_mb:.0f} |"
        )
        print(lines[-1], flush=True)
        # What every SLURM job pays first: its own snakemake parses the workflow and builds
        # the DAG of its target jobs (snakemake-executor-plugin-slurm issue #215).
        remote_seconds, remote_peak, _ = run_timed(
            [snakemake, "-n", "--cores", "1", "--configfile", str(config), "--target-jobs",
             "prepare:slide=slide000000", "--allowed-rules", "prepare"],
            REPO,
        )  # fmt: skip
        lines.append(
            f"| {size:,} | one remote job's own DAG (`--target-jobs`, as in each SLURM job) | 1 "
            f"| – | {remote_seconds:.1f} | – | {remote_peak:.0f} |"
        )
        print(lines[-1], flush=True)
        bare = [snakemake, "-n", "--cores", "1", "--config", f"samples={sheet}", f"slide={SLIDE}"]
        bare_seconds, bare_peak, bare_output = run_timed(bare, work)
        bare_quiet_seconds, _, _ = run_timed([*bare, "--quiet"], work)
        bare_jobs = int(re.search(r"^total\s+(\d+)", bare_output, re.MULTILINE)[1])
        lines.append(
            f"| {size:,} | bare five-rule Snakefile | {bare_jobs:,} | {bare_jobs:,} | "
            f"{bare_seconds:.1f} | {bare_quiet_seconds:.1f} | {bare_peak:.0f} |"
        )
        print(lines[-1], flush=True)
    write_table(work / "dag_scaling.md", lines)


if __name__ == "__main__":
    main()
