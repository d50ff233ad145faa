"""Time and peak memory of HESpotEx's model on CPU as slides grow: decoding and training steps.

Decoding: the image stream (QuiltNet-sized 512-d features, random values; a real spot graph,
the sparse kNN k = 4 of a 100 µm hexagonal lattice) predicts every spot of a slide, chunk by
chunk, as the decode stage does. Training: one step of the expression autoencoder
(G → 512 → 64, k = 8 with self loops) and one step of the image stream on one section of N
spots. Each measurement runs in a fresh process under `/usr/bin/time -v` (wall time and peak
RSS include starting Python and importing torch, ≈ 0.3 GB).

    .venv/bin/python benchmarks/model_scaling.py --work /tmp/hespotex-scaling \
        [--decode-spots 50000 200000] [--training-spots 10000 50000 200000]

prints a Markdown table (also written to <work>/table.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from timing import run_timed, write_table

FEATURE_DIM = 512
GENES = {"decode": 1000, "training": 250}
DECODE_SPOTS = (50_000, 200_000)
TRAINING_SPOTS = (10_000, 50_000, 200_000)
SPOT_CHUNK = 8192


def hex_lattice(n_spots: int):
    import numpy as np

    columns = int(np.ceil(np.sqrt(n_spots)))
    row, column = np.divmod(np.arange(n_spots), columns)
    x = column * 100.0 + (row % 2) * 50.0
    return np.stack([x, row * 100.0 * np.sqrt(3) / 2], axis=1)


def measure_once(kind: str, n_spots: int) -> None:
    """Run one measurement in this process and print its seconds (without start-up)."""
    import torch
    from torch.nn import functional

    from hespotex.graph import knn_edges
    from hespotex.model import ExpressionAutoencoder, ImageStream, ImageStreamShape, pearson_rows

    torch.manual_seed(0)
    genes = GENES[kind]
    coords = hex_lattice(n_spots)
    model = ImageStream(ImageStreamShape(FEATURE_DIM, 64, genes, dropout=0.3))
    features = torch.randn(n_spots, FEATURE_DIM)
    start = time.perf_counter()
    edges = torch.from_numpy(knn_edges(coords, 4))
    if kind == "decode":
        prediction = model.eval().predict(features, edges, SPOT_CHUNK)
        assert prediction.shape == (n_spots, genes)
    else:
        expression = torch.rand(n_spots, genes) * 8
        gate_edges = torch.from_numpy(knn_edges(coords, 8, self_loops=True))
        autoencoder = ExpressionAutoencoder(genes)
        gate_optimiser = torch.optim.Adam(autoencoder.parameters(), lr=1e-3, weight_decay=1e-4)
        latent, reconstruction = autoencoder(expression, gate_edges)
        functional.mse_loss(reconstruction, expression).backward()
        gate_optimiser.step()
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
        prediction, image_latent = model(features, edges)
        loss = 1 - pearson_rows(latent.detach(), image_latent).mean()
        (loss + functional.mse_loss(prediction, expression)).backward()
        optimiser.step()
    print(f"{time.perf_counter() - start:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-scaling"))
    parser.add_argument("--decode-spots", type=int, nargs="*", default=list(DECODE_SPOTS))
    parser.add_argument("--training-spots", type=int, nargs="*", default=list(TRAINING_SPOTS))
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SPOTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure_once(args.one[0], int(args.one[1]))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    runs = [("decode", n) for n in args.decode_spots]
    runs += [("training", n) for n in args.training_spots]
    lines = [
        f"| what ({FEATURE_DIM}-d features) | genes | spots | work (s) | "
        "process wall (s) | peak RSS (MB) | extra MB per 1k extra spots |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline = {}
    for kind, n_spots in runs:
        seconds, peak_mb, stdout = run_timed(
            [sys.executable, __file__, "--one", kind, str(n_spots)]
        )
        baseline.setdefault(kind, (n_spots, peak_mb))
        first_spots, first_mb = baseline[kind]
        growth = (
            f"{(peak_mb - first_mb) / ((n_spots - first_spots) / 1000):.1f}"
            if n_spots > first_spots
            else ""
        )
        lines.append(
            f"| {kind} | {GENES[kind]} | {n_spots:,} | {float(stdout.strip()):.1f} | "
            f"{seconds:.1f} | {peak_mb:.0f} | {growth} |"
        )
        print(lines[-1], flush=True)
    write_table(args.work / "table.md", lines)


if __name__ == "__main__":
    main()
