"""Patch reading alone, and reading with the encoder, by the reading pool's threads and processes.

On a JPEG pyramid of real H&E pixels (the pipeline's tissue and tiles stages, 224 px patches
at 0.5 µm/px), each measurement runs in a fresh process:

- ``reader``: every batch of patches read, nothing else (`iter_patch_batches` with threads,
  `ReadingPool.batches` with processes), for each worker count;
- ``reader + encoder``: the same, each batch encoded on `--device` (no feature store);
- ``encoder``: batches already in memory, encoded (the encoder's own rate).

With `--against REV`, every measurement is repeated, alternating, with hespotex imported from
a git worktree of REV (e.g. the commit before a reader change): old against new on one
machine in one run, the only comparison that machines of different speed allow.

    python benchmarks/reader_sweep.py --work /tmp/hespotex-sweep [--side 12000] \\
        [--workers 1 2 4 8 14] [--device cuda] [--architecture vit-b-32] [--against REV]

prints a Markdown table (also written to <work>/reader_sweep.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from timing import build_he_pyramid, run_child, write_table

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 256
MIN_SECONDS = 3.0


def hespotex_api():
    """The reader, slide and encoder functions, from this layout or the one before the
    package had layers (hespotex.patches, hespotex.slide, ...), so older revisions run too."""
    try:
        from hespotex.encoder.build import load_encoder
        from hespotex.encoder.devices import pick_device
        from hespotex.encoder.runners import TorchRunner
        from hespotex.io.patches import iter_patch_batches
        from hespotex.io.slide import open_slide
    except ImportError:
        from hespotex.encoders import load_encoder, pick_device
        from hespotex.patches import iter_patch_batches
        from hespotex.runners import TorchRunner
        from hespotex.slide import open_slide
    return iter_patch_batches, open_slide, load_encoder, TorchRunner, pick_device


def child(mode: str, kind: str, workers: int, slide: str, device: str, architecture: str) -> None:
    """One measurement in this process (hespotex from PYTHONPATH); prints JSON."""
    import numpy as np

    from hespotex.config import EncoderConfig

    iter_patch_batches, open_slide, load_encoder, TorchRunner, pick_device = hespotex_api()

    centres = np.load(Path(slide).with_suffix(".centres.npy"))
    runner = None
    if mode != "reader":
        config = EncoderConfig(architecture=architecture, weights="random")
        runner = TorchRunner(load_encoder(config), pick_device(device))
    with open_slide(slide, "sweep") as opened:
        plan = opened.plan(112.0, 0.5)
        if mode == "encoder":
            first = centres[:BATCH_SIZE]
            batch = np.concatenate(list(iter_patch_batches(opened, first, plan, BATCH_SIZE, 1)))

            def work() -> int:
                for _ in range(8):
                    runner(batch, opened.path)
                return 8 * len(batch)

        else:
            processes = None
            if kind == "processes":
                from hespotex.io.reading_pool import ReadingPool

                processes = ReadingPool(workers, BATCH_SIZE, plan.output_px)

            def batches():
                if processes is not None:
                    return processes.batches(opened, "sweep", centres, plan, BATCH_SIZE, 2048)
                return iter_patch_batches(opened, centres, plan, BATCH_SIZE, workers)

            def work() -> int:
                count = 0
                for patches in batches():
                    if runner is not None:
                        runner(patches, opened.path)
                    count += len(patches)
                return count

        work()  # warm: slide handles, tile caches, CUDA kernels
        rounds, patches, started = 0, 0, time.perf_counter()
        while True:
            patches += work()
            rounds += 1
            elapsed = time.perf_counter() - started
            if elapsed >= MIN_SECONDS:
                break
        if mode != "encoder" and processes is not None:
            processes.close()
    print(json.dumps({"patches_per_second": patches / elapsed}))


def measure(pythonpath: Path, *arguments: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return run_child(__file__, list(arguments), env)["patches_per_second"]


def centres_of(slide: Path, work: Path) -> int:
    """The pipeline's own spot grid over the slide, saved beside it for the children."""
    import numpy as np

    from hespotex.config import parse_config
    from hespotex.io.records import read_spots
    from hespotex.io.slide import open_slide
    from hespotex.paths import SlidePaths
    from hespotex.stages.tiles import run_tiles
    from hespotex.stages.tissue import run_tissue

    config = parse_config(
        {"encoder": {"architecture": "stain-stats"}, "results": str(work / "results")}
    )
    with open_slide(slide, "sweep") as opened:
        run_tissue(opened, "sweep", config)
        run_tiles(opened, "sweep", config)
    spots = read_spots(SlidePaths(config.results, "sweep").spots)
    centres = spots[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    np.save(slide.with_suffix(".centres.npy"), centres)
    return len(centres)


def worktree_of(revision: str, work: Path) -> Path:
    folder = work / f"hespotex-{revision}"
    if not folder.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), revision],
            check=True,
            capture_output=True,
        )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-sweep"))
    parser.add_argument("--side", type=int, default=12000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 14])
    parser.add_argument("--kinds", nargs="+", default=["threads", "processes"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--architecture", default="vit-b-32")
    parser.add_argument("--against", help="a git revision to measure beside this checkout")
    parser.add_argument("--tile", type=Path, help="a PNG of real H&E (without tiatoolbox)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, kind, workers, slide, device, architecture = args.child
        child(mode, kind, int(workers), slide, device, architecture)
        return
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"he-{args.side}.tif"
    if not slide.exists():
        build_he_pyramid(slide, args.side, args.side // 20, args.tile)
    spots = centres_of(slide, work)
    checkouts = {"this checkout": REPO}
    if args.against:
        checkouts[args.against] = worktree_of(args.against, work)
    measurements = [("encoder", "-", 0)]
    for mode in ("reader", "reader + encoder"):
        for kind in args.kinds:
            measurements += [(mode, kind, workers) for workers in args.workers]
    lines = [
        f"{spots:,} spots of a {args.side}² px JPEG pyramid of real H&E pixels, batches of "
        f"{BATCH_SIZE}, {args.architecture} (random weights) on {args.device}, "
        f"{os.cpu_count()} CPU cores",
        "",
        "| what | readers | workers | " + " | ".join(checkouts) + " (patches/s) |",
        "|---|---|---|" + "---|" * len(checkouts),
    ]
    for mode, kind, workers in measurements:
        if kind == "processes" and args.against:
            continue  # the older checkouts have no reader processes
        rates = [
            measure(path, mode, kind, str(workers), str(slide), args.device, args.architecture)
            for path in checkouts.values()
        ]
        cells = " | ".join(f"{rate:,.0f}" for rate in rates)
        lines.append(f"| {mode} | {kind} | {workers or '-'} | {cells} |")
        print(lines[-1], flush=True)
    write_table(work / "reader_sweep.md", lines)


if __name__ == "__main__":
    main()
