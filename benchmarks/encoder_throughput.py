"""Encoder throughput: presets side by side, PyTorch and ONNX Runtime, on batches of real patches.

Each encoder preset is built as the features stage builds it (EfficientNet-Lite0 with its
installed ImageNet weights; the others with RANDOM weights, seed 0: none can be downloaded here,
and speed does not depend on the values), exported with `hespotex export-onnx`'s code, and run
on the same batches of real H&E patches from ``../shared/data/slides/CMU-1-Small-Region.svs``
through the runners the features stage uses: PyTorch (on CUDA: bf16 autocast, channels_last,
pinned memory) and ONNX Runtime (CUDA provider when present, else CPU). Each figure is the best
of three timed passes after a warm-up, all encoders measured in one run (compare ratios within
a run); the maximum absolute difference between the runtimes' features is reported too, and
on CUDA each encoder's peak GPU memory.

CPU (the default presets: the pretrained encoder beside the paper's ViT-B/32):

    .venv/bin/python benchmarks/encoder_throughput.py --work /tmp/hespotex-encoder

GPU (ViT-B/32, a UNI-size ViT-L/16, a ViT-g/14; the machine's onnxruntime is CPU-only):

    python benchmarks/encoder_throughput.py --work /tmp/enc-gpu --no-onnx --batch-size 256 \\
        --batches 8 --architectures vit-b-32 uni h-optimus-0

``--depth N`` builds the ViTs with N blocks instead of their own: a smoke test of the script
on a machine too small for the giant ones (the table then says so; not a measurement).
Prints a Markdown table (also written to <work>/encoder_throughput.md).
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
DEPTH_KEYS = {"timm": "depth", "open_clip": "layers", "transformers": "num_hidden_layers"}


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


def encoder_config(name: str, depth: int | None):
    """The preset as the features stage builds it: packaged weights where it has them, else
    random; at ``depth`` blocks when given (smoke tests)."""
    from hespotex.config import EncoderConfig
    from hespotex.encoder_specs import ENCODER_PRESETS

    spec = ENCODER_PRESETS[name]
    weights = None if spec.packaged_weights else "random"
    if depth is None or spec.family.value not in DEPTH_KEYS:
        return EncoderConfig(architecture=name, weights=weights)
    kwargs = {**spec.model_kwargs, DEPTH_KEYS[spec.family.value]: depth}
    custom = spec.model_copy(update={"name": f"{name}-depth{depth}", "model_kwargs": kwargs})
    return EncoderConfig(architecture="custom", custom=custom, weights=weights)


def measure(name: str, args, batches: list[np.ndarray], device) -> list[tuple]:
    from hespotex.encoder.build import load_encoder
    from hespotex.encoder.runners import OnnxRunner, TorchRunner, export_onnx

    config = encoder_config(name, args.depth)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    encoder = load_encoder(config)
    weights = "random" if encoder.identity.is_random else "pretrained"
    runners = {"torch": TorchRunner(encoder, device)}
    if args.onnx:
        onnx_path = args.work / f"{config.spec.name}.onnx"
        export_onnx(encoder, onnx_path, 224)
        runners["onnx"] = OnnxRunner(onnx_path, encoder.identity, device.type)
    difference = ""
    if len(runners) == 2:
        torch_features = runners["torch"](batches[0], args.slide)
        gap = np.abs(torch_features - runners["onnx"](batches[0], args.slide)).max()
        difference = f"{gap / np.abs(torch_features).max():.1e}"
    rows = []
    for runner in runners.values():
        rate = patches_per_second(runner, batches, args.slide)
        memory = (
            f"{torch.cuda.max_memory_allocated() / 2**20:,.0f}"
            if device.type == "cuda" and isinstance(runner, TorchRunner)
            else "–"
        )
        rows.append((config.spec.name, weights, runner.describe(), rate, difference, memory))
    return rows


def main() -> None:
    from hespotex.encoder.devices import pick_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-encoder"))
    parser.add_argument(
        "--architectures", nargs="+", default=["efficientnet-lite0-imagenet", "vit-b-32"]
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--depth", type=int, help="blocks per ViT (smoke tests only)")
    parser.add_argument("--slide", type=Path, default=SVS, help="where the real patches come from")
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time ONNX Runtime (--no-onnx where only its CPU build is installed)",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    patches = real_patches(args.slide, args.batch_size * args.batches)
    batches = [patches[i : i + args.batch_size] for i in range(0, len(patches), args.batch_size)]
    device = pick_device("auto")
    rows = [row for name in args.architectures for row in measure(name, args, batches, device)]
    where = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU, {len(os.sched_getaffinity(0))} cores"
    )
    baseline = rows[0][3]
    depth = f"; ViTs at depth {args.depth}: a SMOKE TEST, not a measurement" if args.depth else ""
    lines = [
        f"Batch {args.batch_size}, {len(patches)} real patches, on {where}{depth}",
        "",
        "| encoder | weights | runtime | patches/s | vs first row | max rel. ONNX − torch "
        "| peak GPU MB |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {weights} | {runtime} | {rate:,.1f} | {rate / baseline:.2f} "
            f"| {difference or '–'} | {memory} |"
            for name, weights, runtime, rate, difference, memory in rows
        ),
    ]
    write_table(args.work / "encoder_throughput.md", lines)


if __name__ == "__main__":
    main()
