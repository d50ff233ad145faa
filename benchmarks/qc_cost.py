"""What quality control costs per slide, beside the features stage it runs ahead of.

On a TCGA-sized JPEG TIFF pyramid (30,000 px square at 0.5 µm/px, a 20x scan of 15 × 15 mm,
real H&E pixels — tiatoolbox's tile — over all but a 0.5 mm margin: ≈ 19,000 spots), side by
side in one run, each the best of ``REPEATS``:

- the tissue stage without artefact detection (``tissue.artifacts.ink/fold.action: off``) and
  with it (the defaults);
- the tiles stage without quality control (ink, fold and blur off) and with it (the defaults:
  each spot's field read again at 1 µm/px for its blur score);
- the features stage's two floors over the same spots: reading their patches alone (224 px at
  0.5 µm/px, ``features.num_workers`` threads) — what bounds it on a GPU node ("Feature
  extraction on the GPU": reading, not the encoder, is the bottleneck there) — and the
  default encoder (EfficientNet-Lite0) on this CPU, its time per patch on a batch of 64 real
  patches times the spot count.

    .venv/bin/python benchmarks/qc_cost.py --work /tmp/hespotex-qc-cost

prints a Markdown table (also written to <work>/table.md).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from timing import TCGA_SIDE_PX, best_of, tcga_sized_pyramid, write_table

from hespotex.config import parse_config
from hespotex.encoder.build import load_encoder
from hespotex.encoder.encoding import sample_patches
from hespotex.encoder.runners import TorchRunner
from hespotex.io.patches import iter_patch_batches
from hespotex.io.records import read_spots
from hespotex.io.slide import open_slide
from hespotex.paths import SlidePaths
from hespotex.stages.tiles import run_tiles
from hespotex.stages.tissue import run_tissue

REPEATS = 2
QC_OFF = {"ink": {"action": "off"}, "fold": {"action": "off"}, "blur": {"action": "off"}}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pyramid = tcga_sized_pyramid(work)
    configs = {
        name: parse_config(
            {
                "encoder": {"architecture": "stain-stats"},
                "results": str(work / name),
                "tissue": {"artifacts": artifacts},
            }
        )
        for name, artifacts in (("without", QC_OFF), ("with", {}))
    }
    with open_slide(pyramid, "slide") as slide:
        seconds = {}
        for name, config in configs.items():
            seconds[f"tissue {name}"] = best_of(
                lambda c=config: run_tissue(slide, "slide", c), REPEATS
            )
            seconds[f"tiles {name}"] = best_of(
                lambda c=config: run_tiles(slide, "slide", c), REPEATS
            )
        spots = read_spots(SlidePaths(configs["with"].results, "slide").spots)
        centres = spots[["x_px", "y_px"]].to_numpy()
        features = configs["with"].features
        plan = slide.plan(features.patch_um, features.patch_mpp)

        def read_all() -> None:
            for _ in iter_patch_batches(
                slide, centres, plan, features.batch_size, features.num_workers
            ):
                pass

        seconds["features: reading the patches"] = best_of(read_all, REPEATS)
        batch = sample_patches(slide, centres, features, 64)
        pretrained = parse_config(
            {"encoder": {"architecture": "efficientnet-lite0-imagenet"}}
        ).encoder
        runner = TorchRunner(load_encoder(pretrained), torch.device("cpu"))
        per_patch = best_of(lambda: runner(batch, pyramid), 3) / len(batch)
        seconds["features: EfficientNet-Lite0 on this CPU"] = per_patch * len(spots)
    qc_cost = (
        seconds["tissue with"]
        + seconds["tiles with"]
        - seconds["tissue without"]
        - seconds["tiles without"]
    )
    reading = seconds["features: reading the patches"]
    encoding = seconds["features: EfficientNet-Lite0 on this CPU"]
    rows = [
        f"{len(spots):,} spots on a {TCGA_SIDE_PX:,} px square pyramid at 0.5 µm/px, "
        f"{torch.get_num_threads()} threads",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in seconds.items()),
        f"| QC's cost (tissue + tiles, with − without) | {qc_cost:.2f} |",
        f"| QC's cost / reading the patches | {qc_cost / reading:.2f} |",
        f"| QC's cost / EfficientNet-Lite0 on this CPU | {qc_cost / encoding:.3f} |",
    ]
    write_table(work / "table.md", rows)


if __name__ == "__main__":
    main()
