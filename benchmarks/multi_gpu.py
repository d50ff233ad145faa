"""Every GPU of a machine: the features jobs one at a time against N at once (N: the GPUs
visible), side by side, each job on the GPU it claims.

S slides (symbolic links to one JPEG pyramid of real H&E pixels) get the tissue and tiles
stages once; then S features jobs (one slide each, the command the workflow's jobs run:
`hespotex run --stages features --shard ...`) are run twice, as a local run with
`--resources gpu=1` and with `--resources gpu=N` schedules them: at most 1, then at most N, at
once. Each job's log says which GPU it claimed; the table gives the wall time of each run, the
jobs per GPU, and GPU utilisation (all GPUs' samples together).

    .venv/bin/python benchmarks/multi_gpu.py --work /tmp/hespotex-multi-gpu [--slides 8] \\
        [--side 12000] [--architecture vit-b-32] [--device cuda]

On a machine with one GPU or none it runs the first only (a smoke test:
`--slides 2 --side 3000 --architecture vit-tiny-32 --device cpu`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from timing import build_he_pyramid, utilisation_sampler, write_table

CLAIM = re.compile(r"this job runs on GPU (\d+) of (\d+)")


def visible_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def hespotex(*args: str) -> list[str]:
    return [sys.executable, "-m", "hespotex", *args]


def features_jobs(work: Path, config: Path, slide_ids: list[str], at_once: int) -> float:
    """The features jobs, one slide each, at most ``at_once`` running; their wall time."""

    def job(slide_id: str) -> None:
        shard = work / "shards" / slide_id
        files = ["--shard", str(shard / "sheet.tsv"), "--manifest", str(shard / "manifest.tsv")]
        files += ["--failures", str(shard / "failures.jsonl")]
        subprocess.run(
            hespotex("run", "--config", str(config), "--stages", "features", "--force", *files),
            check=True,
            capture_output=True,
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        list(pool.map(job, slide_ids))
    return time.perf_counter() - started


def claimed_gpus(logs: Path, slide_ids: list[str]) -> Counter:
    claims: Counter = Counter()
    for slide_id in slide_ids:
        found = CLAIM.search((logs / "features" / f"{slide_id}.log").read_text())
        claims[f"GPU {found.group(1)}" if found else "one device"] += 1
    return claims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--side", type=int, default=12000)
    parser.add_argument("--architecture", default="vit-b-32")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pyramid = work / "pyramid.tif"
    if not pyramid.exists():
        build_he_pyramid(pyramid, args.side, args.side // 20)
    slide_ids = [f"slide-{index:02d}" for index in range(args.slides)]
    lines = ["slide_id\tpath\tmpp"]
    for slide_id in slide_ids:
        link = work / f"{slide_id}.tif"
        if not link.exists():
            link.symlink_to(pyramid)
        lines.append(f"{slide_id}\t{link}\t")
    (work / "samples.tsv").write_text("\n".join(lines) + "\n")
    config = work / "config.yaml"
    settings = {
        "samples": str(work / "samples.tsv"),
        "results": str(work / "results"),
        "logs": str(work / "logs"),
        "encoder": {"architecture": args.architecture, "weights": "random"},
        "features": {"device": args.device, "batch_size": 256, "num_workers": 4},
    }
    config.write_text(yaml.safe_dump(settings))
    for slide_id, line in zip(slide_ids, lines[1:], strict=True):
        shard = work / "shards" / slide_id
        shard.mkdir(parents=True, exist_ok=True)
        (shard / "sheet.tsv").write_text(f"{lines[0]}\n{line}\n")
    gpus = visible_gpus()
    subprocess.run(
        hespotex("run", "--config", str(config), *slide_ids, "--stages", "tissue", "tiles"),
        check=True,
        capture_output=True,
    )
    rows = [
        f"{args.slides} slides of {args.side:,} px, one per features job, {args.architecture}, "
        f"{gpus} GPU(s) visible",
        "",
        "| jobs at once | wall (s) | jobs per GPU | GPU busy |",
        "|---|---|---|---|",
    ]
    for allowed in sorted({1, max(1, gpus)}):
        with utilisation_sampler(work / f"busy-{allowed}.csv") as busy:
            seconds = features_jobs(work, config, slide_ids, allowed)
        claims = claimed_gpus(work / "logs", slide_ids)
        spread = ", ".join(f"{name}: {count}" for name, count in sorted(claims.items()))
        rows.append(f"| {allowed} | {seconds:.1f} | {spread} | {busy.summary()} |")
    write_table(work / "table.md", rows)


if __name__ == "__main__":
    main()
