"""Robustness to stain shift on real HER2ST: leave-one-section-out, the held-out section as is
and recoloured, without and with stain normalisation.

Each fold holds one of the four HER2ST sections out (``hespotex.evaluation.crossval``'s plan:
the next section validates, the other two train), trains HESpotEx on the rest as `hespotex
crossval` does (genes chosen on the training sections, the same seeds), and scores the
held-out section's mean gene Pearson on its own image and on recoloured copies of it, each a
whole-section shift as another lab's staining would be:

- ``cmu1-stain``, ``os1-stain``: re-stained to the colours of OpenSlide's CMU-1 and OS-1
  slides (``../shared/data/slides``): the section's Macenko stain vectors and intensities
  (tiatoolbox's extractor) swapped for those measured on the other slide;
- ``cmu1-lab``: CMU-1's colours by Reinhard's LAB statistics instead, a shift that is not
  Macenko-shaped.

The drop is unshifted minus shifted, per fold and seed; the table gives its mean over folds
(mean ± sd over seeds) per normalisation (``stain.normalisation``: none, macenko, reinhard,
vahadane, each with ``stain.target: checkpoint``, i.e. normalised to the fold's training
sections' stain). The goal: with normalisation the drop is at most a third of the drop
without, and the unshifted score falls by no more than 0.01.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/stain_robustness.py --work /tmp/stain-shift

The encoder is ``stain-stats`` (weights-free colour, stain and texture statistics: fast on
CPU, and as colour-sensitive as an encoder gets); training is shortened
(``benchmarks/her2st/stain-robustness.yaml``): the measured run took 1 h 43 min on two cores
shared with other work; its last folds, under less load, took 79–112 s each, about half an
hour for the 16 folds at that pace (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from hespotex.config import ServedModel, StainNormalisation, load_config
from hespotex.encoder.build import load_encoder
from hespotex.encoder.devices import pick_device
from hespotex.encoder.runners import TorchRunner
from hespotex.encoder.stain import StainTransform, fit_profile
from hespotex.evaluation.crossval import fold_plan
from hespotex.evaluation.evaluate import evaluate_encoded, summarise
from hespotex.io.atomic import atomic_path
from hespotex.io.sections import Section, read_sections_sheet
from hespotex.io.slide import open_slide
from hespotex.training.data import encode_sections, load_sections, training_stain
from hespotex.training.fit import fit
from hespotex.training.genes import select_genes, seurat_v3_ranks, shared_genes

REPO = Path(__file__).resolve().parents[1]
SLIDES = (REPO.parent / "shared" / "data" / "slides").resolve()
SECTIONS_SHEET = REPO / "benchmarks" / "her2st" / "sections.tsv"
CONFIG = REPO / "benchmarks" / "her2st" / "stain-robustness.yaml"
BAND_ROWS = 1024
UNSHIFTED = "unshifted"
SCORE = "pearson_all"

logger = logging.getLogger("stain_robustness")


def read_rgb(path: Path) -> np.ndarray:
    with open_slide(path, path.stem, 0.5) as slide:
        width, height = slide.dimensions
        return slide.backend.read_region((0, 0), 0, (width, height))


def recolour(image: np.ndarray, method: StainNormalisation, other: np.ndarray) -> np.ndarray:
    """``image`` in ``other``'s colours: each measured by ``method`` (tiatoolbox's extractor
    or Reinhard's LAB statistics), then the whole image mapped band by band."""
    transform = StainTransform(
        fit_profile(method, [image], "section"), fit_profile(method, [other], "other slide")
    )
    return np.concatenate(
        [
            transform(image[top : top + BAND_ROWS][None])[0]
            for top in range(0, len(image), BAND_ROWS)
        ]
    )


def shifted_sections(sections: list[Section], work: Path) -> dict[str, dict[str, Section]]:
    """For each shift, each section with its image recoloured (written once, as JPEG
    quality 95 like the originals' compression)."""
    others = {
        "cmu1": read_rgb(SLIDES / "CMU-1-Small-Region.svs"),
        "os1": read_rgb(SLIDES / "OS-1-detail.ome.tif"),
    }
    shifts = {
        "cmu1-stain": (StainNormalisation.MACENKO, "cmu1"),
        "os1-stain": (StainNormalisation.MACENKO, "os1"),
        "cmu1-lab": (StainNormalisation.REINHARD, "cmu1"),
    }
    Image.MAX_IMAGE_PIXELS = None
    shifted: dict[str, dict[str, Section]] = {shift: {} for shift in shifts}
    for section in sections:
        image = None
        for shift, (method, other) in shifts.items():
            path = work / "shifted" / shift / f"{section.section_id}.jpg"
            if not path.is_file():
                if image is None:
                    image = np.asarray(Image.open(section.image).convert("RGB"))
                with atomic_path(path) as tmp:
                    Image.fromarray(recolour(image, method, others[other])).save(
                        tmp, format="JPEG", quality=95
                    )
            shifted[shift][section.section_id] = dataclasses.replace(section, image=path)
    return shifted


def run(work: Path, methods: list[StainNormalisation], seeds: list[int]) -> pd.DataFrame:
    """One row per normalisation, fold, seed and test variant (unshifted or a shift)."""
    config = load_config(CONFIG)
    sections = load_sections(read_sections_sheet(SECTIONS_SHEET), config.training.min_spot_counts)
    by_id = {section.section_id: section for section in sections}
    shifted = shifted_sections(sections, work)
    runner = TorchRunner(load_encoder(config.encoder), pick_device(config.features.device))
    everywhere = shared_genes(sections)
    ranks = {section.section_id: seurat_v3_ranks(section, everywhere) for section in sections}
    rows = []
    for method in methods:
        method_config = config.model_copy(
            update={"stain": config.stain.model_copy(update={"normalisation": method})}
        )
        for test, validation, training in fold_plan(list(by_id)):
            started = time.perf_counter()
            # As a checkpoint of this fold would: normalised to its training sections' stain.
            stain = training_stain([by_id[section_id] for section_id in training], method_config)
            variants = {UNSHIFTED: by_id[test]} | {
                shift: copies[test] for shift, copies in shifted.items()
            }
            fitted_on = [by_id[section_id] for section_id in (*training, validation)]
            encoded = encode_sections(
                [*fitted_on, *variants.values()], method_config, runner, stain
            )
            test_encoded = dict(zip(variants, encoded[len(fitted_on) :], strict=True))
            genes = select_genes(
                [by_id[section_id] for section_id in training],
                config.training,
                [by_id[section_id].genes for section_id in (validation, test)],
                ranks,
            )
            for seed in seeds:
                seeded = method_config.model_copy(
                    update={"training": config.training.model_copy(update={"seed": seed})}
                )
                checkpoint = fit(
                    encoded[: len(fitted_on)],
                    validation,
                    seeded,
                    runner.identity,
                    genes=genes,
                    stain=stain,
                )
                for variant, test_section in test_encoded.items():
                    table, _ = evaluate_encoded(
                        checkpoint, [test_section], None, ServedModel.HESPOTEX
                    )
                    summary = summarise(table[table["model"] == ServedModel.HESPOTEX.value])
                    rows.append(
                        {
                            "normalisation": method.value,
                            "test": test,
                            "seed": seed,
                            "variant": variant,
                            "pearson_all": summary["pearson_all"],
                            "pearson_top_variance": summary["pearson_top_variance"],
                            "chosen_epoch": checkpoint.meta.training["chosen_epoch"],
                        }
                    )
            fold = pd.DataFrame(rows).query("normalisation == @method.value and test == @test")
            logger.info(
                "%s, fold %s, %.0f s: mean Pearson %s",
                method.value,
                test,
                time.perf_counter() - started,
                fold.groupby("variant", sort=False)[SCORE].mean().round(4).to_dict(),
            )
    return pd.DataFrame(rows)


def _mean_sd(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"


def summary_table(rows: pd.DataFrame) -> tuple[list[str], dict]:
    """Per normalisation: the unshifted score and, per shift, the drop (mean over folds, then
    mean ± sd over seeds), against none; and whether the goal is met."""
    per_seed = rows.groupby(["normalisation", "variant", "seed"], sort=False)[SCORE].mean()
    scores = per_seed.unstack("variant")
    shifts = [column for column in scores.columns if column != UNSHIFTED]
    drops = scores[shifts].rsub(scores[UNSHIFTED], axis=0)
    methods = list(dict.fromkeys(rows["normalisation"]))
    header = ["normalisation", "unshifted", "vs none", *(f"drop {shift}" for shift in shifts)]
    header += [f"drop / drop without, {shift}" for shift in shifts] + ["goal met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    verdicts = {}
    baseline = "none"
    for method in methods:
        unshifted = scores.loc[method, UNSHIFTED]
        change = unshifted - scores.loc[baseline, UNSHIFTED]
        ratios = {
            shift: drops.loc[method, shift].mean() / drops.loc[baseline, shift].mean()
            for shift in shifts
        }
        met = (
            method != baseline
            and change.mean() >= -0.01
            and all(r <= 1 / 3 for r in ratios.values())
        )
        verdicts[method] = {
            "unshifted": unshifted.mean(),
            "unshifted_change_vs_none": change.mean(),
            "drops": {shift: drops.loc[method, shift].mean() for shift in shifts},
            "drop_ratio_vs_none": ratios,
            "goal_met": bool(met),
        }
        cells = [
            method,
            _mean_sd(unshifted),
            "" if method == baseline else f"{change.mean():+.3f}",
            *(_mean_sd(drops.loc[method, shift]) for shift in shifts),
            *("" if method == baseline else f"{ratios[shift]:.2f}" for shift in shifts),
            "" if method == baseline else ("yes" if met else "no"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines, verdicts


def fold_table(rows: pd.DataFrame) -> list[str]:
    """Mean Pearson per normalisation, fold and variant (mean ± sd over seeds)."""
    variants = list(dict.fromkeys(rows["variant"]))
    header = ["normalisation", "test section", *variants]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (method, test), group in rows.groupby(["normalisation", "test"], sort=False):
        cells = [_mean_sd(group.loc[group["variant"] == variant, SCORE]) for variant in variants]
        lines.append(f"| {method} | {test} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="recoloured images, tables")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[method.value for method in StainNormalisation],
        choices=[method.value for method in StainNormalisation],
        help="normalisations to compare (none is the baseline, always run)",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    methods = [StainNormalisation.NONE] + [
        StainNormalisation(name) for name in args.methods if name != StainNormalisation.NONE
    ]
    started = time.perf_counter()
    rows = run(args.work, methods, args.seeds)
    rows.to_csv(args.work / "rows.tsv", sep="\t", index=False)
    lines, verdicts = summary_table(rows)
    (args.work / "summary.json").write_text(json.dumps(verdicts, indent=2) + "\n")
    print(f"mean gene Pearson ({SCORE}), seeds {args.seeds}, {time.perf_counter() - started:.0f} s")
    print("\n".join(lines))
    print()
    print("\n".join(fold_table(rows)))


if __name__ == "__main__":
    sys.exit(main())
