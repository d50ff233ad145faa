"""Quality control against planted artefacts on real H&E: ink, blur and folds.

Each real HER2ST section (``../shared/data/her2st``, resampled to 1 µm/px) gets artefacts
planted by ``hespotex.demo.planted_artifacts`` — one kind per run, so each is measured
alone — and goes through the pipeline's tissue and tiles stages with the default config
(``tissue.artifacts.slide_check: warn``, so a failing slide still reports). The planted masks
are the truth:

- ink (a ring on the glass around the tissue, a curve across it and a dot on it, 0.6 mm
  wide, colours varying by seed): pixel IoU of the ink found against the planted ink on the
  tissue stage's overview, tissue recall against the clean slide's tissue mask (outside the
  planted ink), and the share of kept spots whose patch is over a quarter planted ink;
- blur (a disc of 1 mm radius blurred by a Gaussian of σ µm): recall of the blur flag on the
  tissue spots inside the disc, and the share of sharp tissue spots (outside the disc) flagged,
  leaving out the spots whose field straddles the disc's edge;
- folds (a 0.5 × 2.5 mm strip of tissue laid over the tissue beside it): recall of the fold
  flag on the spots whose patch is over a quarter planted fold, and its precision: the share
  of flagged spots whose patch holds some planted fold (the rest lie on the section's own
  dense tissue).

    .venv/bin/python benchmarks/artifacts_qc.py --work /tmp/hespotex-artifacts [--quick]

Prints one line per run and a summary per artefact; the last line is the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from hespotex.config import parse_config
from hespotex.demo.builder import her2st_image, read_image, resample
from hespotex.demo.planted_artifacts import at_size, planted_slide
from hespotex.io.backends import ArraySlide
from hespotex.io.records import read_artifacts, read_mask, read_scored_spots
from hespotex.io.slide import Slide
from hespotex.paths import SlidePaths
from hespotex.stages.spot_qc import footprint_fraction
from hespotex.stages.tiles import run_tiles
from hespotex.stages.tissue import run_tissue, tissue_mask

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HER2ST_MPP = 0.69
MPP = 1.0
SECTIONS = ("B4", "C2", "C3", "C4")
SEEDS = (0, 1, 2)
INK_COLOURS = (("green", "blue", "black"), ("blue", "red", "black"), ("black", "green", "blue"))
BLUR_SIGMAS_UM = (3.0, 4.0)
TRUTH_SHARE = 0.25


def planted_share(spots: pd.DataFrame, mask: np.ndarray, patch_um: float) -> np.ndarray:
    """Share of each spot's patch footprint inside a full-size (1 µm/px) planted mask."""
    return footprint_fraction(mask, MPP, spots[["x_um", "y_um"]].to_numpy(), patch_um)


def run_one(section: str, kind: str, seed: int, sigma_um: float, work: Path) -> dict:
    image = resample(read_image(her2st_image(SHARED, section)), HER2ST_MPP, MPP)
    options = {"blur_sigma_um": sigma_um} if kind == "blur" else {}
    if kind == "ink":
        options["ink_colours"] = INK_COLOURS[seed % len(INK_COLOURS)]
    planted = planted_slide(image, MPP, seed, kinds=(kind,), **options)
    name = f"{section}-{kind}-{seed}" + (f"-s{sigma_um:g}" if kind == "blur" else "")
    config = parse_config(
        {
            "encoder": {"architecture": "stain-stats"},
            "results": str(work / "results"),
            "tissue": {"artifacts": {"slide_check": "warn"}},
        }
    )
    slide = Slide(ArraySlide(planted.image, f"{name}.tif"), MPP, "planted")
    started = time.perf_counter()
    record = run_tissue(slide, name, config)
    run_tiles(slide, name, config)
    seconds = time.perf_counter() - started
    paths = SlidePaths(config.results, name)
    spots = read_scored_spots(paths)
    kept = spots["qc"] != "dropped"
    patch_um = config.features.patch_um
    row = {"section": section, "kind": kind, "seed": seed, "seconds": round(seconds, 1)}
    if kind == "ink":
        ink, _ = read_artifacts(paths.artifacts_mask)
        tissue = read_mask(paths.tissue_mask)
        truth = at_size(planted.ink_mask(), ink.shape)
        found = ink > 0
        clean_overview = np.asarray(
            Image.fromarray(image).resize(ink.shape[::-1], Image.Resampling.BOX)
        )
        clean = tissue_mask(clean_overview, record.mask_mpp, config.tissue) & ~truth
        on_ink = planted_share(spots, planted.ink_mask(), patch_um) > TRUTH_SHARE
        row |= {
            "colours": "/".join(INK_COLOURS[seed % len(INK_COLOURS)]),
            "ink_iou": round(float((truth & found).sum() / max(1, (truth | found).sum())), 3),
            "tissue_recall": round(float((clean & tissue).sum() / max(1, clean.sum())), 3),
            "kept_spots": int(kept.sum()),
            "kept_on_ink": round(float((kept & on_ink).sum() / max(1, kept.sum())), 4),
        }
    elif kind == "blur":
        field_um = config.tissue.artifacts.blur.field_um
        inside = planted_share(spots, planted.blur, field_um)
        scored = spots["blur_score"].notna()
        flagged = spots["qc_reasons"].str.contains("blur")
        blurred, sharp = scored & (inside >= 0.99), scored & (inside <= 0.01)
        row |= {
            "sigma_um": sigma_um,
            "blurred_spots": int(blurred.sum()),
            "blur_recall": round(float((flagged & blurred).sum() / max(1, blurred.sum())), 3),
            "sharp_spots": int(sharp.sum()),
            "sharp_flagged": round(float((flagged & sharp).sum() / max(1, sharp.sum())), 4),
            "sharp_score_p95": round(float(spots.loc[sharp, "blur_score"].quantile(0.95)), 3),
        }
    else:
        share = planted_share(spots, planted.fold, patch_um)
        truth, touching = share > TRUTH_SHARE, share > 0
        flagged = spots["qc_reasons"].str.contains("fold")
        row |= {
            "fold_spots": int(truth.sum()),
            "fold_recall": round(float((flagged & truth).sum() / max(1, truth.sum())), 3),
            "flagged": int(flagged.sum()),
            "flagged_on_fold": int((flagged & touching).sum()),
            "fold_precision": round(float((flagged & touching).sum() / max(1, flagged.sum())), 3),
        }
    shutil.rmtree(paths.root, ignore_errors=True)
    return row


def summarise(rows: list[dict]) -> dict:
    table = pd.DataFrame(rows)
    summary = {}
    ink = table[table["kind"] == "ink"]
    if len(ink):
        summary["ink"] = {
            "runs": len(ink),
            "ink_iou_min": ink["ink_iou"].min(),
            "ink_iou_mean": round(ink["ink_iou"].mean(), 3),
            "tissue_recall_min": ink["tissue_recall"].min(),
            "tissue_recall_mean": round(ink["tissue_recall"].mean(), 3),
            "kept_on_ink_max": ink["kept_on_ink"].max(),
        }
    blur = table[table["kind"] == "blur"]
    for sigma, runs in blur.groupby("sigma_um"):
        blurred = runs["blurred_spots"].sum()
        sharp = runs["sharp_spots"].sum()
        summary[f"blur_sigma_{sigma:g}um"] = {
            "runs": len(runs),
            "blur_recall": round((runs["blur_recall"] * runs["blurred_spots"]).sum() / blurred, 3),
            "blur_recall_min": runs["blur_recall"].min(),
            "sharp_flagged": round((runs["sharp_flagged"] * runs["sharp_spots"]).sum() / sharp, 4),
            "sharp_flagged_max": runs["sharp_flagged"].max(),
        }
    fold = table[table["kind"] == "fold"]
    if len(fold):
        hits = (fold["fold_recall"] * fold["fold_spots"]).sum()
        summary["fold"] = {
            "runs": len(fold),
            "fold_recall": round(hits / max(1, fold["fold_spots"].sum()), 3),
            "fold_recall_min": fold["fold_recall"].min(),
            "fold_precision": round(
                fold["flagged_on_fold"].sum() / max(1, fold["flagged"].sum()), 3
            ),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="one section, one seed")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sections, seeds = (SECTIONS[:1], SEEDS[:1]) if args.quick else (SECTIONS, SEEDS)
    runs = []
    for section in sections:
        for seed in seeds:
            runs.append((section, "ink", seed, 0.0))
            runs.append((section, "fold", seed, 0.0))
            runs.extend((section, "blur", seed, sigma) for sigma in BLUR_SIGMAS_UM)
    rows = []
    with ProcessPoolExecutor(max_workers=args.processes) as pool:
        futures = [pool.submit(run_one, *run, args.work) for run in runs]
        for future in futures:
            row = future.result()
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = summarise(rows)
    for kind, figures in summary.items():
        print(kind, figures)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
