"""Time and peak memory of HESpotEx's model on CPU as slides grow: decoding and training steps.

Decoding: the image stream (QuiltNet-sized 512-d features, random values; a real spot graph,
the sparse kNN k = 4 of a 100 µm hexagonal lattice) predicts every spot of a slide, chunk by
chunk, as the decode stage does. Training, through `hespotex.training.fit`'s own functions: one
step of the expression autoencoder (G → 512 → 64, k = 8 with self loops), reading every
spot's expression latent, then one step of the image stream, on one section of N spots —
in spatial blocks of `training.spots_per_step` spots (the default), and for comparison on
the whole graph at once. Each measurement runs in a fresh process under ``timing.run_timed``
(wall time and peak RSS include starting Python and importing torch, ≈ 0.3 GB).

    .venv/bin/python benchmarks/model_scaling.py --work /tmp/hespotex-scaling \
        [--decode-spots 50000 200000] [--training-spots 10000 50000 200000] \
        [--whole-graph-spots 10000 20000 40000] [--device cuda]

On a GPU (`--device cuda`) the table adds the peak GPU memory PyTorch allocated.

prints a Markdown table (also written to <work>/table.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from timing import run_timed, write_table

FEATURE_DIM = 512
GENES = {"decode": 1000, "training in blocks": 250, "training, whole graph": 250}
DECODE_SPOTS = (50_000, 200_000)
TRAINING_SPOTS = (10_000, 50_000, 200_000)
WHOLE_GRAPH_SPOTS = (10_000, 20_000, 40_000)
SPOT_CHUNK = 8192


def hex_lattice(n_spots: int):
    import numpy as np

    columns = int(np.ceil(np.sqrt(n_spots)))
    row, column = np.divmod(np.arange(n_spots), columns)
    x = column * 100.0 + (row % 2) * 50.0
    return np.stack([x, row * 100.0 * np.sqrt(3) / 2], axis=1)


def measure_once(kind: str, n_spots: int, device_name: str) -> None:
    """Run one measurement in this process and print its seconds (without start-up) and the
    peak GPU memory in MB (0 on CPU)."""
    import torch

    from hespotex.config import TrainingConfig
    from hespotex.network.spot_graph import knn_edges
    from hespotex.network.streams import ImageStream, ImageStreamShape
    from hespotex.training.data import SectionTensors, section_blocks
    from hespotex.training.loops import image_stream_epoch, train_expression_latents

    torch.manual_seed(0)
    device = torch.device(device_name)
    genes = GENES[kind]
    coords = hex_lattice(n_spots)
    model = ImageStream(ImageStreamShape(FEATURE_DIM, 64, genes, dropout=0.3)).to(device)
    features = torch.randn(n_spots, FEATURE_DIM, device=device)
    start = time.perf_counter()
    if kind == "decode":
        edge_index = torch.from_numpy(knn_edges(coords, 4)).to(device)
        prediction = model.eval().predict(features, edge_index, SPOT_CHUNK)
        assert prediction.shape == (n_spots, genes)
    else:
        config = TrainingConfig(gate_epochs=1)
        spots_per_step = config.spots_per_step if kind == "training in blocks" else n_spots
        decoder_blocks, gate_blocks = section_blocks(
            coords, 4, config.gate_k, spots_per_step, device
        )
        section = SectionTensors(
            section_id="benchmark",
            expression=torch.rand(n_spots, genes, device=device) * 8,
            features=features,
            decoder_blocks=decoder_blocks,
            gate_blocks=gate_blocks,
            nucleus_counts=None,
        )
        train_expression_latents([section], genes, config)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-3)
        image_stream_epoch(model, optimiser, [section])
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_gpu_mb = 0.0
    print(f"{time.perf_counter() - start:.2f} {peak_gpu_mb:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-scaling"))
    parser.add_argument("--decode-spots", type=int, nargs="*", default=list(DECODE_SPOTS))
    parser.add_argument("--training-spots", type=int, nargs="*", default=list(TRAINING_SPOTS))
    parser.add_argument("--whole-graph-spots", type=int, nargs="*", default=list(WHOLE_GRAPH_SPOTS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SPOTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure_once(args.one[0], int(args.one[1]), args.device)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    runs = [("decode", n) for n in args.decode_spots]
    runs += [("training in blocks", n) for n in args.training_spots]
    runs += [("training, whole graph", n) for n in args.whole_graph_spots]
    on_gpu = args.device.startswith("cuda")
    lines = [
        f"| what ({FEATURE_DIM}-d features) | genes | spots | work (s) | "
        "work per 1k spots (s) | process wall (s) | peak RSS (MB) | extra MB per 1k extra spots |"
        + (" peak GPU memory (MB) |" if on_gpu else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if on_gpu else ""),
    ]
    baseline = {}
    for kind, n_spots in runs:
        seconds, peak_mb, stdout = run_timed(
            [sys.executable, __file__, "--one", kind, str(n_spots), "--device", args.device]
        )
        baseline.setdefault(kind, (n_spots, peak_mb))
        first_spots, first_mb = baseline[kind]
        growth = (
            f"{(peak_mb - first_mb) / ((n_spots - first_spots) / 1000):.1f}"
            if n_spots > first_spots
            else ""
        )
        work, peak_gpu_mb = (float(value) for value in stdout.split()[-2:])
        gpu_column = f" {peak_gpu_mb:.0f} |" if on_gpu else ""
        lines.append(
            f"| {kind} | {GENES[kind]} | {n_spots:,} | {work:.1f} | {work / n_spots * 1000:.2f} | "
            f"{seconds:.1f} | {peak_mb:.0f} | {growth} |{gpu_column}"
        )
        print(lines[-1], flush=True)
    write_table(args.work / "table.md", lines)


if __name__ == "__main__":
    main()
