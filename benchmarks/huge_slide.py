"""Peak memory and time of each per-slide stage on a huge slide, next to a small one.

The fault matrix asks that a slide with ≥ 200,000 spots runs in bounded memory. This builds two
JPEG TIFF pyramids of real H&E pixels (tiatoolbox's tile, tiled) at 0.5 µm/px, lays a 20 µm
hexagonal grid on them (the huge one gets ≈ 233,000 spots), and runs every stage as the
pipeline does (`hespotex <stage>`), recording wall time and peak RSS (``timing.run_timed``).
To keep it minutes on a 2-core CPU it uses the weights-free `stain-stats` encoder and
64 px patches at 1.75 µm/px (the same 112 µm field); memory is a matter of the pipeline's
structure (windowed reads, chunked writes, chunked decoding), not of the encoder.

    .venv/bin/python benchmarks/huge_slide.py --work /tmp/hespotex-huge

prints a Markdown table (also written to <work>/table.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from timing import build_he_pyramid, run_timed, write_table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
STAGES = ("tissue", "tiles", "features", "graph", "decode")
SIZES = {"small": 5000, "huge": 20000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-huge"))
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    hespotex = str(Path(sys.executable).parent / "hespotex")

    settings = {
        "encoder": {"architecture": "stain-stats"},
        "grid": {"spacing_um": 20.0},
        "features": {"patch_px": 64, "patch_mpp": 1.75, "batch_size": 512, "num_workers": 2},
        "training": {"gate_epochs": 100, "epochs": 100, "patience": 20},
    }
    config_for_training = work / "train.yaml"
    config_for_training.write_text(yaml.safe_dump(settings))
    checkpoint = work / "model.safetensors"
    if not checkpoint.exists():
        from hespotex.demo.builder import build_planted

        build_planted(work, SHARED)
        run_timed(
            [hespotex, "train", "--config", str(config_for_training), "--sections",
             str(work / "planted" / "sections.tsv"), "--validation", "b4-right",
             "--out", str(checkpoint)]
        )  # fmt: skip

    rows = []
    for name, side in SIZES.items():
        slide = work / f"{name}.tif"
        if not slide.exists():
            build_he_pyramid(slide, side, side // 20)
        sheet = work / f"{name}.tsv"
        sheet.write_text(f"slide_id\tpath\tmpp\n{name}\t{slide}\t\n")
        config = work / f"{name}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    **settings,
                    "samples": str(sheet),
                    "results": str(work / "results"),
                    "decode": {"checkpoint": str(checkpoint)},
                }
            )
        )
        for stage in STAGES:
            seconds, peak_mb, _ = run_timed([hespotex, stage, "--config", str(config), name])
            rows.append((name, side, stage, seconds, peak_mb))
            print(f"{name} {stage}: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB", flush=True)
        spots = len((work / "results" / name / "spots.tsv").read_text().splitlines()) - 1
        rows.append((name, side, "spots", spots, 0.0))

    lines = [
        "| slide | size (px) | spots | stage | wall (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    spot_counts = {row[0]: row[3] for row in rows if row[2] == "spots"}
    for name, side, stage, seconds, peak_mb in rows:
        if stage != "spots":
            lines.append(
                f"| {name} | {side}² | {spot_counts[name]:,} | {stage} | {seconds:.1f} | "
                f"{peak_mb:.0f} |"
            )
    write_table(work / "table.md", lines)


if __name__ == "__main__":
    main()
