"""The tissue stage's stain check on every real image here: its verdict and its numbers.

Every slide of ``../shared/data/slides``, the four HER2ST sections (mpp 0.69 from the
sheet), tiatoolbox's H&E reference tile and scikit-image's real IHC image (each built into a
pyramid TIFF at 0.5 µm/px, the IHC image on glass as the tests build it), through the tissue
stage with ``tissue.stain_check: off`` so that every verdict is recorded rather than raised.
A slide the stage refuses for other reasons (dark: fluorescence) or that no reader opens is
listed with the error.

    .venv/bin/python benchmarks/stain_check.py --work /tmp/hespotex-stain-check
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from hespotex.config import parse_config
from hespotex.errors import NotBrightfieldError, SlideError
from hespotex.io.pyramids import write_pyramid_tiff
from hespotex.io.slide import open_slide
from hespotex.stages.stain_check import measure_stain
from hespotex.stages.tissue import run_tissue

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO.parent / "shared" / "data").resolve()


def images(work: Path) -> list[tuple[str, Path, float | None]]:
    from skimage.data import immunohistochemistry
    from tiatoolbox.data import stain_norm_target

    tile = work / "tiatoolbox-he-tile.tif"
    write_pyramid_tiff(tile, stain_norm_target(), 0.5)
    ihc = work / "skimage-ihc.tif"
    on_glass = np.full((1400, 1400, 3), 243, dtype=np.uint8)
    on_glass[150:1174, 150:1174] = np.tile(immunohistochemistry(), (2, 2, 1))
    write_pyramid_tiff(ihc, on_glass, 0.5)
    listed = [(path.name, path, None) for path in sorted((DATA / "slides").iterdir())]
    for section in ("B4", "C2", "C3", "C4"):
        path = next((DATA / "her2st" / section).glob("*.jpg"))
        listed.append((f"HER2ST {section} ({path.name})", path, 0.69))
    listed.append(("tiatoolbox H&E tile (pyramid)", tile, None))
    listed.append(("scikit-image IHC image (pyramid)", ihc, None))
    return listed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    # Before tiatoolbox is imported, which otherwise logs every INFO line to stdout.
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    config = parse_config(
        {
            "encoder": {"architecture": "stain-stats"},
            "results": str(args.work / "results"),
            "tissue": {"stain_check": "off"},
        }
    )
    print(
        "| image | verdict | DAB brown | other dye | stained | mean OD (R, G, B) | "
        "median brightness | tissue px |\n|---|---|---|---|---|---|---|---|"
    )
    for index, (name, path, mpp) in enumerate(images(args.work)):
        try:
            with open_slide(path, f"s{index}", mpp) as slide:
                try:
                    stain = run_tissue(slide, f"s{index}", config).stain_check
                except NotBrightfieldError:
                    overview, _ = slide.read_overview(config.tissue.mask_mpp)
                    whole = np.ones(overview.shape[:2], dtype=bool)
                    stain = measure_stain(overview, whole).as_record()
        except SlideError as error:
            print(f"| {name} | not read: {error.cause[:90]} | | | | | | |")
            continue
        density = ", ".join(f"{value:.2f}" for value in stain["mean_optical_density"])
        print(
            f"| {name} | {stain['verdict']} | {stain['dab_fraction']:.1%} | "
            f"{stain['other_fraction']:.1%} | {stain['stained_fraction']:.1%} | ({density}) | "
            f"{stain['median_brightness']:.2f} | {stain['tissue_pixels']:,} |"
        )


if __name__ == "__main__":
    main()
