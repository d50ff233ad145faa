"""How the workflow's DAG and its SLURM submissions grow with the cohort: 100 to 10,000 slides.

For synthetic sample sheets of N slides (every row the same small real slide, so nothing is
computed), measures a dry run (`snakemake -n`) of the real workflow with the SLURM profile:
wall time and peak RSS (``timing.run_timed``), jobs and the submissions it would make (each
job a submission: a job runs a shard of slides). Next to it, the same figures for bare
Snakefiles with one job per slide per rule: five rules (one per stage) and three (the light
stages paired, as the workflow paired them before shards). Needs the demo checkpoint (`make
demo` builds it; only its metadata is read).

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

BARE_HEADER = """
SLIDES = [line.split("\\t")[0] for line in open(config["samples"]).read().splitlines()[1:]]

rule all:
    input: expand("out/{slide}/expression.h5ad", slide=SLIDES)
"""


def bare_snakefile(rules: list[tuple[str, str]]) -> str:
    """One job per slide per rule, each touching its output: (rule, output file) in order,
    the first reading the slide, the last writing expression.h5ad."""
    text, previous = BARE_HEADER, 'config["slide"]'
    for name, output in rules:
        text += (
            f'\nrule {name}:\n    input: {previous}\n    output: "out/{{slide}}/{output}"\n'
            '    shell: "touch {output}"\n'
        )
        previous = f'"out/{{slide}}/{output}"'
    return text


BARE_FIVE_RULES = bare_snakefile(
    [
        ("tissue", "tissue.json"),
        ("tiles", "spots.tsv"),
        ("features", "features.zarr"),
        ("graph", "graph.zarr"),
        ("decode", "expression.h5ad"),
    ]
)
BARE_THREE_RULES = bare_snakefile(
    [("prepare", "spots.tsv"), ("features", "features.zarr"), ("predict", "expression.h5ad")]
)


def count_submissions(dry_run_output: str) -> tuple[int, dict[str, int]]:
    """Jobs, and the submissions a dry run announces per rule: local rules excluded, and the
    target rule `all`, which the dry run lists as a rule but which runs nothing."""
    jobs = int(re.search(r"^total\s+(\d+)", dry_run_output, re.MULTILINE)[1])
    submissions: dict[str, int] = {}
    for match in re.finditer(r"^rule (\S+):", dry_run_output, re.MULTILINE):
        if match[1] != "all":
            submissions[match[1]] = submissions.get(match[1], 0) + 1
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
    bare_snakefiles = {"five": work / "five.smk", "three": work / "three.smk"}
    bare_snakefiles["five"].write_text(BARE_FIVE_RULES)
    bare_snakefiles["three"].write_text(BARE_THREE_RULES)

    lines = [
        "| slides | workflow | jobs | submissions (per rule) | dry run (s) | `-n --quiet` (s) "
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
        jobs, per_rule = count_submissions(output)
        rules = ", ".join(f"{name} {count:,}" for name, count in sorted(per_rule.items()))
        lines.append(
            f"| {size:,} | HESpotEx, SLURM profile | {jobs:,} | {sum(per_rule.values()):,} "
            f"({rules}) | {seconds:.1f} | {quiet_seconds:.1f} | {peak_mb:.0f} |"
        )
        print(lines[-1], flush=True)
        # What every SLURM job pays first: its own snakemake (in remote mode, as the executor
        # starts it) parses the workflow and builds the DAG of its target job.
        remote_seconds, remote_peak, _ = run_timed(
            [snakemake, "-n", "--cores", "1", "--configfile", str(config), "--target-jobs",
             "prepare:shard=00000", "--allowed-rules", "prepare", "--mode", "remote"],
            REPO,
        )  # fmt: skip
        lines.append(
            f"| {size:,} | one remote job's own DAG (`--target-jobs`, as in each SLURM job) | 1 "
            f"| – | {remote_seconds:.1f} | – | {remote_peak:.0f} |"
        )
        print(lines[-1], flush=True)
        for rules, snakefile in bare_snakefiles.items():
            bare = [snakemake, "-n", "--cores", "1", "--snakefile", str(snakefile),
                    "--config", f"samples={sheet}", f"slide={SLIDE}"]  # fmt: skip
            bare_seconds, bare_peak, bare_output = run_timed(bare, work)
            bare_quiet_seconds, _, _ = run_timed([*bare, "--quiet"], work)
            bare_jobs = int(re.search(r"^total\s+(\d+)", bare_output, re.MULTILINE)[1])
            lines.append(
                f"| {size:,} | bare {rules}-rule Snakefile, a job per slide and rule | "
                f"{bare_jobs:,} | {bare_jobs:,} | {bare_seconds:.1f} | {bare_quiet_seconds:.1f} "
                f"| {bare_peak:.0f} |"
            )
            print(lines[-1], flush=True)
    write_table(work / "dag_scaling.md", lines)


if __name__ == "__main__":
    main()
