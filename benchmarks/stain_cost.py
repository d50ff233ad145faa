"""What stain normalisation costs: per slide (the fit) and per patch (the mapping), beside the
encoders it runs ahead of, and tiatoolbox's own per-patch normaliser.

On real patches (224 px at 0.5 µm/px, read by the pipeline's reader from HER2ST section C3,
``../shared/data/her2st``), one thread each, side by side in one run:

- importing tiatoolbox's normalisers in a fresh process that has imported torch already, as
  a features process has (paid once per process: once per slide in the workflow);
- normalised to tiatoolbox's reference H&E tile (``tiatoolbox.data.stain_norm_target``);
- the per-slide fit on ``stain.fit_patches`` = 64 patches (``hespotex.encoder.encoding``'s
  ``fit_slide_stain``: read the patches, measure the stain);
- the per-patch mapping (``StainTransform`` on batches of 64), against tiatoolbox's
  ``StainNormalizer.transform`` (which measures the source again on every patch) and against
  the encoders' own time per patch on this CPU (``stain-stats``; ``vit-b-32``, random
  weights: speed does not depend on the values);
- the features stage's read + encode loop over the section's whole spot grid with the
  ``stain-stats`` encoder, without and with each normalisation (the mapping runs in the
  reading threads, beside the encoder).

    .venv/bin/python benchmarks/stain_cost.py --work /tmp/hespotex-stain-cost
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from timing import best_of

from hespotex.config import StainNormalisation, parse_config
from hespotex.encoder.build import load_encoder
from hespotex.encoder.encoding import encode_patches, fit_slide_stain, sample_patches
from hespotex.encoder.runners import TorchRunner
from hespotex.encoder.stain import StainSetting, fit_profile
from hespotex.io.records import read_spots
from hespotex.io.slide import open_slide
from hespotex.paths import SlidePaths
from hespotex.stages.tiles import run_tiles
from hespotex.stages.tissue import run_tissue

REPO = Path(__file__).resolve().parents[1]
SECTION = next((REPO.parent / "shared" / "data" / "her2st" / "C3").glob("*.jpg")).resolve()
HER2ST_MPP = 0.69
METHODS = (StainNormalisation.MACENKO, StainNormalisation.VAHADANE, StainNormalisation.REINHARD)
REPEATS = 5


IMPORT = """
import time
import torch  # a features process has imported it already
started = time.perf_counter()
import tiatoolbox.tools.stainnorm
print(time.perf_counter() - started)
"""


def import_seconds() -> float:
    """What importing tiatoolbox's normalisers adds to a fresh process that has torch."""
    command = [sys.executable, "-c", IMPORT]
    runs = [subprocess.run(command, check=True, capture_output=True, text=True) for _ in range(3)]
    return min(float(run.stdout) for run in runs)


def main() -> None:
    # Before tiatoolbox is imported, which otherwise logs every INFO line to stdout.
    logging.basicConfig(level=logging.WARNING)
    from tiatoolbox.data import stain_norm_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = parse_config(
        {
            "encoder": {"architecture": "stain-stats"},
            "results": str(args.work / "results"),
            "features": {"device": "cpu", "num_workers": 1},
        }
    )
    with open_slide(SECTION, "c3", HER2ST_MPP) as slide:
        run_tissue(slide, "c3", config)
        run_tiles(slide, "c3", config)
        centres = read_spots(SlidePaths(config.results, "c3").spots)[["x_px", "y_px"]].to_numpy()
        batch = sample_patches(slide, centres, config.features, 64)
        target = stain_norm_target()  # tiatoolbox's real H&E reference tile
        rows = [
            (
                "importing tiatoolbox's normalisers, per process (torch loaded)",
                import_seconds(),
                "s",
            )
        ]
        encoders = {
            "stain-stats": load_encoder(config.encoder),
            "vit-b-32": load_encoder(
                parse_config({"encoder": {"architecture": "vit-b-32", "weights": "random"}}).encoder
            ),
        }
        images = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
        for name, encoder in encoders.items():
            with torch.inference_mode():
                seconds = best_of(lambda encoder=encoder: encoder(images), 3)
            rows.append((f"encoder {name}, per patch", 1000 * seconds / len(batch), "ms"))
        for method in METHODS:
            setting = StainSetting(method=method, target=fit_profile(method, [target], "target"))
            fit_seconds = best_of(
                lambda setting=setting: fit_slide_stain(
                    slide, centres, config.features, setting, 64
                ),
                3,
            )
            transform = fit_slide_stain(slide, centres, config.features, setting, 64)
            mapping = best_of(lambda transform=transform: transform(batch), REPEATS)
            rows.append((f"{method.value}: fit on 64 patches, per slide", fit_seconds, "s"))
            rows.append((f"{method.value}: mapping, per patch", 1000 * mapping / 64, "ms"))
            tiatoolbox = own_normaliser(method, target)
            per_patch = best_of(lambda tiatoolbox=tiatoolbox: [tiatoolbox(p) for p in batch[:8]], 3)
            rows.append(
                (f"{method.value}: tiatoolbox's transform, per patch", 1000 * per_patch / 8, "ms")
            )
        runner = TorchRunner(encoders["stain-stats"], torch.device("cpu"))
        for method in (StainNormalisation.NONE, *METHODS):
            setting = (
                StainSetting()
                if method == StainNormalisation.NONE
                else StainSetting(method=method, target=fit_profile(method, [target], "target"))
            )

            def loop(setting=setting) -> None:
                transform = fit_slide_stain(slide, centres, config.features, setting, 64)
                for _ in encode_patches(slide, centres, runner, config.features, stain=transform):
                    pass

            seconds = best_of(loop, 3)
            rows.append(
                (
                    f"features loop, stain-stats, {method.value}: {len(centres)} patches",
                    len(centres) / seconds,
                    "patches/s",
                )
            )
    print(f"HER2ST C3 ({SECTION.name}), one thread, best of {REPEATS} (3 for slow steps)")
    print("| what | value | unit |\n|---|---|---|")
    for what, value, unit in rows:
        print(f"| {what} | {value:,.3g} | {unit} |")


def own_normaliser(method: StainNormalisation, target: np.ndarray):
    """tiatoolbox's normaliser fitted on ``target``: its ``transform`` per patch."""
    from tiatoolbox.tools.stainnorm import get_normalizer

    normaliser = get_normalizer(method.value)
    normaliser.fit(target)
    return lambda patch: normaliser.transform(patch.copy())


if __name__ == "__main__":
    main()
