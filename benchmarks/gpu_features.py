"""Feature extraction on a GPU, end to end: `hespotex features` as the pipeline runs it.

A JPEG TIFF pyramid of real H&E pixels at 0.5 µm/px (tiatoolbox's tile, or a PNG of it where
tiatoolbox is not installed) gets the pipeline's tissue and tiles stages on a 20 µm hexagonal
grid, then the features stage with the paper's ViT-B/32 architecture (RANDOM weights: none can
be downloaded here; speed does not depend on the values) on the GPU: reader threads, pinned
memory, bf16 autocast. While it runs, `nvidia-smi` samples GPU utilisation every 200 ms.
Patches/s is spots over the stage's own seconds (qc/stages/features.json, the encoder's
set-up taken out: after start-up, imports and loading the encoder), beside the encoder's own
rate (spots over the seconds spent in the encoder, from the same record); the utilisation is
given over the stage's steady part (from the first busy sample to the last) and over the
whole process.

    python benchmarks/gpu_features.py --work /tmp/hespotex-gpu [--side 12000] \\
        [--batch-size 256] [--num-workers 12] [--reading processes] [--tile tile.png]

prints a Markdown table (also written to <work>/gpu_features.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml
from timing import build_he_pyramid, run_timed, utilisation_sampler, write_table

TCGA_SPOTS = 200e6


def run_stage(stage: str, config: Path, slide_id: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `hespotex` stage, as the pipeline runs it."""
    seconds, peak_mb, _ = run_timed(
        [sys.executable, "-m", "hespotex", stage, "--config", str(config), slide_id]
    )
    return seconds, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-gpu"))
    parser.add_argument("--side", type=int, default=12000, help="slide side in pixels")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--tile", type=Path, help="a PNG of real H&E (without tiatoolbox)")
    parser.add_argument("--architecture", default="vit-b-32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reading", choices=("threads", "processes"), default="processes")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"he-{args.side}.tif"
    if not slide.exists():
        build_he_pyramid(slide, args.side, args.side // 20, args.tile)
    sheet = work / "samples.tsv"
    sheet.write_text(f"slide_id\tpath\tmpp\ngpu\t{slide}\t\n")
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "samples": str(sheet),
                "results": str(work / "results"),
                "encoder": {"architecture": args.architecture, "weights": "random"},
                "grid": {"spacing_um": 20.0},
                "features": {
                    "device": args.device,
                    "batch_size": args.batch_size,
                    "num_workers": args.num_workers,
                    "reading": args.reading,
                },
            }
        )
    )
    for stage in ("tissue", "tiles"):
        run_stage(stage, config, "gpu")
    with utilisation_sampler(work / "nvidia-smi.csv") as busy:
        process_seconds, peak_mb = run_stage("features", config, "gpu")
    results = work / "results" / "gpu"
    spots = len((results / "spots.tsv").read_text().splitlines()) - 1
    record = json.loads((results / "qc" / "stages" / "features.json").read_text())
    stage_seconds = record["seconds"] - record.get("setup", 0.0)  # the encoder loaded
    rate = spots / stage_seconds
    lines = [
        f"`hespotex features`, {args.architecture} (random weights) on {args.device}, "
        f"{args.side}² px slide at 0.5 µm/px, {spots:,} spots (224 px patches at 0.5 µm/px), "
        f"batch {args.batch_size}, {args.num_workers} reader {args.reading}, on "
        f"{busy.device or 'no GPU'} with {os.cpu_count()} CPU cores",
        "",
        "| spots | stage (s) | process (s) | stage patches/s | encoding patches/s | reading, "
        "encoding, writing (s) | GPU busy | peak RSS (MB) | TCGA, 200 M spots (GPU-h) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {spots:,} | {stage_seconds:.1f} | {process_seconds:.1f} | {rate:,.0f} | "
        f"{spots / record['encoding']:,.0f} | {record['reading']:.1f}, {record['encoding']:.1f}, "
        f"{record['writing']:.1f} | {busy.summary()} | {peak_mb:.0f} | "
        f"{TCGA_SPOTS / rate / 3600:.1f} |",
    ]
    write_table(work / "gpu_features.md", lines)


if __name__ == "__main__":
    main()
