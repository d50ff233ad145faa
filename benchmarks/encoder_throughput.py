"""Encoder throughput: PyTorch vs ONNX Runtime, same weights, same batches of real patches.

The ViT-B/32 of the paper (OpenCLIP, QuickGELU) with RANDOM weights (seed 0: no pretrained
weights can be downloaded here; speed does not depend on the values) is exported with
`hespotex export-onnx`'s code and run on batches of real H&E patches from
``../shared/data/slides/CMU-1-Small-Region.svs``, through the runners the features stage
uses: PyTorch (on CUDA: bf16 autocast, channels_last, pinned memory) and ONNX Runtime (CUDA
provider when present, else CPU). Each figure is the best of three timed passes after a
warm-up; the maximum absolute difference between the two runtimes' features is reported too.

    .venv/bin/python benchmarks/encoder_throughput.py --work /tmp/hespotex-encoder \
        [--slide CMU-1-Small-Region.svs] [--no-onnx] [--batch-size 32]

prints a Markdown table (also written to <work>/encoder_throughput.md).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from timing import write_table

REPO = Path(__file__).resolve().parents[1]
SVS = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def real_patches(slide_path: Path, count: int) -> np.ndarray:
    from hespotex.io.patches import iter_patch_batches
    from hespotex.io.slide import open_slide

    with open_slide(slide_path, "svs") as slide:
        plan = slide.plan(112.0, 0.5)
        width, height = slide.dimensions
        xs = np.linspace(200, width - 200, 8)
        ys = np.linspace(200, height - 200, -(-count // 8))
        centres = np.array([(x, y) for y in ys for x in xs])[:count]
        return np.concatenate(list(iter_patch_batches(slide, centres, plan, 64, 2)))


def patches_per_second(runner, batches: list[np.ndarray], slide_path: Path) -> float:
    runner(batches[0], slide_path)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for batch in batches:
            runner(batch, slide_path)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return sum(len(batch) for batch in batches) / best


def main() -> None:
    from hespotex.config import EncoderConfig
    from hespotex.model.encoders import load_encoder
    from hespotex.model.runners import OnnxRunner, TorchRunner, export_onnx, pick_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-encoder"))
    parser.add_argument("--architecture", default="vit-b-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--slide", type=Path, default=SVS, help="where the real patches come from")
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time ONNX Runtime (--no-onnx where only its CPU build is installed)",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    encoder = load_encoder(EncoderConfig(architecture=args.architecture, weights="random"))
    identity = encoder.identity
    patches = real_patches(args.slide, args.batch_size * args.batches)
    batches = [patches[i : i + args.batch_size] for i in range(0, len(patches), args.batch_size)]

    device = pick_device("auto")
    runners = {"torch": TorchRunner(encoder, device)}
    if args.onnx:
        onnx_path = args.work / f"{args.architecture}-random.onnx"
        if not onnx_path.exists():
            export_onnx(encoder, onnx_path, 224)
        runners["onnx"] = OnnxRunner(onnx_path, identity, device.type)
    comparison = ""
    if len(runners) == 2:
        difference = np.abs(
            runners["torch"](batches[0], args.slide) - runners["onnx"](batches[0], args.slide)
        )
        comparison = f"; max |ONNX − torch| = {difference.max():.1e}"
    rates = {
        runners[name].describe(): patches_per_second(runners[name], batches, args.slide)
        for name in runners
    }
    where = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU, {len(os.sched_getaffinity(0))} cores"
    )
    baseline = next(iter(rates.values()))
    lines = [
        f"Encoder {identity.architecture} (random weights), batch {args.batch_size}, "
        f"{len(patches)} real patches, on {where}{comparison}",
        "",
        "| runtime | patches/s | vs PyTorch |",
        "|---|---|---|",
        *(f"| {name} | {rate:,.1f} | {rate / baseline:.2f} |" for name, rate in rates.items()),
    ]
    write_table(args.work / "encoder_throughput.md", lines)


if __name__ == "__main__":
    main()
