"""The features stage over a cohort, as the workflow runs it: many slides per process against
one process per slide, and where each slide's seconds go.

N slides (symbolic links to one JPEG pyramid of real H&E pixels at 0.5 µm/px, each opened as a
slide of its own) get the tissue and tiles stages, then the features stage twice, in turn:

- **one process per slide**: `hespotex features --config C SLIDE`, N processes;
- **one process per job**: `hespotex run --stages features --shard ...`, the workflow's job of
  `--slides-per-job` slides (the encoder, CUDA and the imports loaded once per job).

Each slide's record (qc/stages/features.json) splits its seconds into reading (waiting for
patches), encoding, counting nuclei, writing (waiting for the feature store) and set-up (the
encoder and reader processes, in the record of the slide that paid them); start-up is a
process's wall time outside its slides' stage records, plus set-up. With `nvidia-smi` present,
GPU utilisation is sampled every 200 ms during the per-job run. The TCGA projection scales
the per-job run to 11,700 slides of `--tcga-spots` spots each.

    python benchmarks/cohort_features.py --work /tmp/hespotex-cohort [--slides 50] \\
        [--side 24300] [--spacing-um 100] [--slides-per-job 10] [--architecture vit-b-32] \\
        [--device cuda] [--reading processes --num-workers 12] [--batch-size 256]

prints a Markdown table (also written to <work>/cohort_features.md). On CPU, keep it small
(e.g. `--slides 6 --side 4000 --spacing-um 200 --architecture vit-tiny-32 --device cpu`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from timing import build_he_pyramid, run_timed, utilisation_sampler, write_table

TCGA_SLIDES = 11_700
TCGA_AVERAGE_SPOTS = 17_000
PARTS = ("reading", "encoding", "counting", "writing")


def hespotex(*args: str) -> list[str]:
    return [sys.executable, "-m", "hespotex", *args]


def stage_records(results: Path, slide_ids: list[str]) -> list[dict]:
    return [
        json.loads((results / slide_id / "qc" / "stages" / "features.json").read_text())
        for slide_id in slide_ids
    ]


def split(records: list[dict], process_seconds: float, processes: int) -> dict[str, float]:
    """Seconds per slide: start-up (outside the stage records, plus set-up), the parts of the
    loop, and the rest of the stage (opening the slide, planning, creating the store)."""
    slides = len(records)
    stage = sum(record["seconds"] for record in records)
    setup = sum(record.get("setup", 0.0) for record in records)
    per_slide = {"start-up": (process_seconds - stage + setup) / slides}
    for part in PARTS:
        per_slide[part] = sum(record[part] for record in records) / slides
    per_slide["other"] = (stage - setup) / slides - sum(per_slide[part] for part in PARTS)
    per_slide["total"] = process_seconds / slides
    per_slide["processes"] = processes
    return per_slide


def prepare_in_parallel(slide_ids: list[str], config: Path) -> None:
    """The tissue and tiles stages of every slide, one process per core: set-up, not measured
    (50 TCGA-sized slides one after the other would take minutes of a lent GPU machine)."""
    processes = max(1, min(len(slide_ids), os.cpu_count() or 1))
    shares = [slide_ids[index::processes] for index in range(processes)]
    with ThreadPoolExecutor(processes) as pool:
        list(
            pool.map(
                lambda share: run_timed(
                    hespotex("run", *share, "--config", str(config), "--stages", "tissue", "tiles")
                ),
                shares,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-cohort"))
    parser.add_argument("--slides", type=int, default=50)
    parser.add_argument("--side", type=int, default=24300, help="slide side in pixels")
    parser.add_argument("--spacing-um", type=float, default=100.0)
    parser.add_argument("--slides-per-job", type=int, default=10)
    parser.add_argument("--architecture", default="vit-b-32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reading", choices=("threads", "processes"), default="processes")
    parser.add_argument("--num-workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tcga-spots", type=int, default=TCGA_AVERAGE_SPOTS)
    parser.add_argument(
        "--per-process-slides",
        type=int,
        help="run one process per slide on only this many slides (its per-slide figures)",
    )
    parser.add_argument("--tile", type=Path, help="a PNG of real H&E (without tiatoolbox)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pyramid = work / f"he-{args.side}.tif"
    if not pyramid.exists():
        build_he_pyramid(pyramid, args.side, args.side // 40, args.tile)
    slide_ids = [f"slide{index:03d}" for index in range(args.slides)]
    for slide_id in slide_ids:
        link = work / "slides" / f"{slide_id}.tif"
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(pyramid)
    sheet = work / "samples.tsv"
    rows = [f"{slide_id}\t{work / 'slides' / f'{slide_id}.tif'}\t" for slide_id in slide_ids]
    sheet.write_text("slide_id\tpath\tmpp\n" + "\n".join(rows) + "\n")
    results = work / "results"
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "samples": str(sheet),
                "results": str(results),
                "logs": str(work / "logs"),
                "encoder": {"architecture": args.architecture, "weights": "random"},
                "grid": {"spacing_um": args.spacing_um},
                "features": {
                    "device": args.device,
                    "batch_size": args.batch_size,
                    "num_workers": args.num_workers,
                    "reading": args.reading,
                },
            }
        )
    )
    prepare_in_parallel(slide_ids, config)
    spots = [
        len((results / slide_id / "spots.tsv").read_text().splitlines()) - 1
        for slide_id in slide_ids
    ]

    alone = slide_ids[: args.per_process_slides or len(slide_ids)]
    per_process_seconds = 0.0
    for slide_id in alone:
        command = hespotex("features", slide_id, "--config", str(config), "--force")
        seconds, _, _ = run_timed(command)
        per_process_seconds += seconds
    per_slide = split(stage_records(results, alone), per_process_seconds, len(alone))

    jobs = [
        slide_ids[start : start + args.slides_per_job]
        for start in range(0, len(slide_ids), args.slides_per_job)
    ]
    per_job_seconds, peak_mb = 0.0, 0.0
    with utilisation_sampler(work / "nvidia-smi.csv") as busy:
        for job in jobs:
            seconds, peak, _ = run_timed(
                hespotex("run", *job, "--config", str(config), "--force", "--stages", "features")
            )
            per_job_seconds += seconds
            peak_mb = max(peak_mb, peak)
    per_job = split(stage_records(results, slide_ids), per_job_seconds, len(jobs))

    mean_spots = statistics.mean(spots)
    steady_rate = mean_spots / (per_job["total"] - per_job["start-up"])
    job_startup = per_job["start-up"] * len(slide_ids) / len(jobs)
    tcga_hours = (
        TCGA_SLIDES * (job_startup / args.slides_per_job + args.tcga_spots / steady_rate) / 3600
    )
    overhead_ratio = per_slide["total"] / per_job["total"]
    where = busy.device or "no GPU"
    columns = ["start-up", *PARTS, "other", "total"]
    lines = [
        f"`hespotex` features stage, {args.architecture} (random weights) on {args.device} "
        f"({where}, {os.cpu_count()} CPU cores), {len(slide_ids)} slides of {args.side}² px at "
        f"0.5 µm/px, {mean_spots:,.0f} spots each ({args.spacing_um:g} µm grid), batch "
        f"{args.batch_size}, {args.num_workers} reader {args.reading}",
        "",
        "| run | processes | " + " | ".join(f"{name} (s/slide)" for name in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name, figures in (
        (f"one process per slide ({len(alone)} slides)", per_slide),
        (f"one process per job of {args.slides_per_job} slides", per_job),
    ):
        cells = " | ".join(f"{figures[column]:.2f}" for column in columns)
        lines.append(f"| {name} | {figures['processes']} | {cells} |")
    lines += [
        "",
        f"- one process per slide takes {overhead_ratio:.2f}× the time per slide of one per job; "
        "start-up "
        f"{per_slide['start-up']:.2f} → {per_job['start-up']:.2f} s per slide "
        f"({per_slide['start-up'] / max(per_job['start-up'], 1e-9):.1f}× less).",
        f"- steady rate (per job, start-up excluded): {steady_rate:,.0f} patches/s; "
        f"encoder alone: {mean_spots / per_job['encoding']:,.0f} patches/s; peak RSS of a "
        f"job {peak_mb:,.0f} MB; GPU busy: {busy.summary()}.",
        f"- TCGA projection ({TCGA_SLIDES:,} slides × {args.tcga_spots:,} spots, "
        f"{args.slides_per_job} slides per job): {tcga_hours:.1f} device-hours.",
    ]
    write_table(work / "cohort_features.md", lines)


if __name__ == "__main__":
    main()
