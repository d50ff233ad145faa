"""What the full gene panel (5,457 genes) costs per slide and per cohort, and which storage.

One slide of TCGA's average size (≈ 17,000 spots on the 100 µm grid: a 24,300² px pyramid of
real H&E pixels at 0.5 µm/px) runs through the real stages with a checkpoint of 5,457 genes
(random weights: sizes and memory do not depend on the values; the weights-free stain-stats
encoder keeps the features stage short on CPU). Then:

1. the slide's exact predictions written as `expression.h5ad` in each candidate storage —
   float32 as is; float32 with gzip; float32 rounded to 1/1024 (the low mantissa bits zeroed, far
   below the model's error; the pipeline's default) with gzip or lzf; float16 with gzip —
   measured for size, write and read seconds (`anndata.read_h5ad`, as scanpy opens it), and
   the largest error;
2. the decode and outputs stages as the pipeline runs them (peak RSS, seconds);
3. `hespotex cohort` over 1, 4 and 16 slides (links to the same slide folder), for its peak
   RSS and seconds per slide.

    .venv/bin/python benchmarks/panel_storage.py --work /tmp/hespotex-panel [--genes 5457]

prints Markdown tables (also written to <work>/panel_storage.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from timing import build_he_pyramid, run_timed, write_table

TCGA_SLIDES = 11_700
COHORT_SIZES = (1, 4, 16)


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [item for item in path.rglob("*") if item.is_file()]
    return sum(item.stat().st_size for item in files) / 1e6


def checkpoint_with_genes(path: Path, n_genes: int) -> None:
    import torch

    from hespotex.config import EncoderConfig
    from hespotex.encoder.identity import encoder_identity
    from hespotex.network.checkpoint import Checkpoint, CheckpointMeta, save_checkpoint
    from hespotex.network.probe import LinearProbe
    from hespotex.network.streams import ImageStream

    torch.manual_seed(0)
    meta = CheckpointMeta(
        genes=[f"GENE{index:04d}" for index in range(n_genes)],
        latent_dim=64,
        dropout=0.0,
        graph_k=4,
        encoder=encoder_identity(EncoderConfig(architecture="stain-stats")),
        patch_px=224,
        patch_mpp=0.5,
        trained_on=["none"],
        probe_components=8,
    )
    model = ImageStream(meta.shape)
    probe = LinearProbe(meta.encoder.feature_dim, meta.probe_components, n_genes)
    # log1p CPM levels of a real panel: most genes low, some high.
    levels = np.random.default_rng(0).gamma(2.0, 1.5, (8, n_genes))
    model.start_from_mean(torch.from_numpy(levels).float())
    save_checkpoint(path, Checkpoint(model, probe, meta))


def storage_options(x: np.ndarray) -> dict[str, tuple[np.ndarray, dict]]:
    rounded = np.round(x * 1024) / 1024
    return {
        "float32": (x, {}),
        "float32, gzip": (x, {"compression": "gzip"}),
        "float32 rounded to 1/1024, gzip": (rounded, {"compression": "gzip"}),
        "float32 rounded to 1/1024, lzf": (rounded, {"compression": "lzf"}),
        "float16, gzip": (x.astype(np.float16), {"compression": "gzip"}),
    }


def compare_storage(expression: Path, work: Path) -> list[str]:
    import anndata as ad

    adata = ad.read_h5ad(expression)
    x = np.asarray(adata.X, dtype=np.float32)
    lines = [
        f"| storage of {x.shape[0]:,} spots × {x.shape[1]:,} genes | MB | write (s) | "
        "read (s) | largest error | TCGA, 11,700 slides (TB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, (values, options) in storage_options(x).items():
        candidate = ad.AnnData(X=values, obs=adata.obs, var=adata.var, uns=adata.uns)
        candidate.obsm["spatial"] = adata.obsm["spatial"]
        path = work / "candidate.h5ad"
        started = time.perf_counter()
        candidate.write_h5ad(path, **options)
        written = time.perf_counter()
        back = ad.read_h5ad(path)
        read = time.perf_counter() - written
        error = float(np.abs(np.asarray(back.X, dtype=np.float32) - x).max())
        megabytes = path.stat().st_size / 1e6
        lines.append(
            f"| {name} | {megabytes:,.0f} | {written - started:.1f} | {read:.1f} | "
            f"{error:.1e} | {megabytes * TCGA_SLIDES / 1e6:.2f} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-panel"))
    parser.add_argument("--genes", type=int, default=5457)
    parser.add_argument("--side", type=int, default=24300)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pyramid = work / f"he-{args.side}.tif"
    if not pyramid.exists():
        build_he_pyramid(pyramid, args.side, args.side // 40)
    checkpoint = work / f"panel-{args.genes}.safetensors"
    checkpoint_with_genes(checkpoint, args.genes)
    sheet = work / "samples.tsv"
    rows = [f"slide{index:02d}\t{pyramid}\t" for index in range(max(COHORT_SIZES))]
    sheet.write_text("slide_id\tpath\tmpp\n" + "\n".join(rows) + "\n")
    results = work / "results"
    config = work / "config.yaml"
    settings = {
        "samples": str(sheet),
        "results": str(results),
        "logs": str(work / "logs"),
        "encoder": {"architecture": "stain-stats"},
        "decode": {"checkpoint": str(checkpoint)},
        # Exact predictions, so that every storage below is compared with the model's output.
        "outputs": {"genes": ["GENE0000", "GENE0001"], "expression_step": 0},
    }
    config.write_text(yaml.safe_dump(settings))
    hespotex = [sys.executable, "-m", "hespotex"]
    stages = {}
    for stage in ("tissue", "tiles", "features", "graph", "decode", "outputs"):
        stages[stage] = run_timed([*hespotex, stage, "slide00", "--config", str(config)])[:2]
    slide = results / "slide00"
    spots = len((slide / "spots.tsv").read_text().splitlines()) - 1
    lines = [
        f"One slide of {spots:,} spots, {args.genes:,} genes, {os.cpu_count()} CPU cores",
        "",
        "| stage | seconds | peak RSS (MB) |",
        "|---|---|---|",
        *(f"| {name} | {seconds:.1f} | {peak:,.0f} |" for name, (seconds, peak) in stages.items()),
        "",
        "| file of the slide | MB |",
        "|---|---|",
        *(f"| {path.name} | {size_mb(path):,.1f} |" for path in sorted(slide.iterdir())),
        "",
    ]
    lines += compare_storage(slide / "expression.h5ad", work)
    lines += ["", "| `hespotex cohort` | slides | seconds | s/slide | peak RSS (MB) |"]
    lines.append("|---|---|---|---|---|")
    for size in COHORT_SIZES:
        for index in range(1, size):
            link = results / f"slide{index:02d}"
            if not link.exists():
                link.symlink_to(slide)
        sheet.write_text(
            "slide_id\tpath\tmpp\n"
            + "\n".join(f"slide{index:02d}\t{pyramid}\t" for index in range(size))
            + "\n"
        )
        seconds, peak, _ = run_timed([*hespotex, "cohort", "--config", str(config)])
        lines.append(f"| pseudo-bulk of {args.genes:,} genes | {size} | {seconds:.1f} | "
                     f"{seconds / size:.2f} | {peak:,.0f} |")  # fmt: skip
        print(lines[-1], flush=True)
    write_table(work / "panel_storage.md", lines)


if __name__ == "__main__":
    main()
