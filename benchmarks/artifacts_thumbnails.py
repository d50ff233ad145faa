"""The tissue stage on the real slide thumbnails with marker ink, folds and coverslip edges.

Every image of ``../shared/data/artifacts`` (sources in that folder's README: MSKCC's pen
thumbnails, HistoQC's, histolab's, FolDet's) through ``detect_tissue`` with the default
config at 16 µm/px (their resolution is not recorded; a whole slide at this size is roughly
15–30 µm/px). Prints, per image, the tissue area and the area of each ink colour and of folds
as shares of the image, and draws them all on one contact sheet — the tissue outline in green,
each ink filled in its colour, folds in magenta, as in the QC picture — for a person to judge.

    .venv/bin/python benchmarks/artifacts_thumbnails.py --out benchmarks/artifacts_thumbnails.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image

from hespotex.config import TissueConfig
from hespotex.io.figures import plt, save_figure
from hespotex.io.records import INK_CODES
from hespotex.stages.quality_picture import FOLD_COLOUR, INK_COLOURS, TISSUE_COLOUR, fill_region
from hespotex.stages.tissue import detect_tissue

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO.parent / "shared" / "data" / "artifacts"
MASK_MPP = 16.0
COLUMNS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    images = sorted(FOLDER.glob("*.png")) + sorted(FOLDER.glob("*.jpg"))
    rows = math.ceil(len(images) / COLUMNS)
    figure, grid = plt.subplots(rows, COLUMNS, figsize=(4 * COLUMNS, 3.6 * rows))
    print("| image | tissue | green | blue | red | black | fold |")
    print("|---|---|---|---|---|---|---|")
    for axes, path in zip(grid.ravel(), images, strict=False):
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        found = detect_tissue(rgb, MASK_MPP, TissueConfig())
        shares = [found.tissue.mean()] + [(found.ink == code).mean() for code in INK_CODES.values()]
        shares.append(found.fold.mean())
        print(f"| {path.name} | " + " | ".join(f"{share:.1%}" for share in shares) + " |")
        axes.imshow(rgb)
        if found.tissue.any():
            axes.contour(found.tissue, levels=[0.5], colors=[TISSUE_COLOUR], linewidths=0.8)
        for colour, code in INK_CODES.items():
            if (found.ink == code).any():
                fill_region(axes, found.ink == code, INK_COLOURS[colour])
        if found.fold.any():
            fill_region(axes, found.fold, FOLD_COLOUR)
        axes.set_title(path.name, fontsize=8)
    for axes in grid.ravel():
        axes.set_axis_off()
    save_figure(figure, args.out, dpi=45)


if __name__ == "__main__":
    main()
