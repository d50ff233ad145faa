"""Shared fixtures: real data paths, small pyramids of real H&E pixels, a trained checkpoint.

Real files are read from ``../shared/data`` beside the checkout, never copied. The encoder in
tests is ``vit-tiny-32`` with random weights (no pretrained weights can be downloaded here).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
SLIDES = SHARED_DATA / "slides"
SVS = SLIDES / "CMU-1-Small-Region.svs"
DICOM_FOLDER = SLIDES / "CMU-1-Small-Region-dicom"
OME_TIFF = SLIDES / "OS-1-detail.ome.tif"
NDPI = SLIDES / "test3-DAPI-2-387.ndpi"
OPENSLIDE_REJECTS = SLIDES / "TCGA-XK-AAJU-small.dcm"

TEST_ENCODER = {"architecture": "vit-tiny-32", "weights": "random", "seed": 0}
# CI sets these to 1 so that the tests needing them fail instead of skipping.
REQUIRE_VIEWERS = "HESPOTEX_REQUIRE_VIEWERS"
REQUIRE_SLURM = "HESPOTEX_REQUIRE_SLURM"
REQUIRE_MOUNT = "HESPOTEX_REQUIRE_MOUNT"
VIEWERS_PYTHON = REPO / ".venv-viewers" / "bin" / "python"


@pytest.fixture(scope="session", autouse=True)
def _checksum_cache(tmp_path_factory) -> None:
    """The weights checksum cache of the tests' own, not the user's ~/.cache (subprocesses,
    Snakemake and its jobs, inherit it)."""
    from hespotex.io.checksum import CACHE_DIR_VARIABLE

    os.environ[CACHE_DIR_VARIABLE] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session", autouse=True)
def _shared_data_present() -> None:
    if not SVS.is_file():
        pytest.fail(f"the real test data is missing: expected {SHARED_DATA} beside the checkout")


@pytest.fixture(scope="session")
def he_tile() -> np.ndarray:
    """A real H&E tile shipped by tiatoolbox (1000 × 1000 px)."""
    from tiatoolbox.data import stain_norm_target

    return stain_norm_target()


def tissue_on_glass(he_tile: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]):
    """A slide image: glass (near-white) with real H&E pixels tiled into ``box``
    (x0, y0, x1, y1)."""
    width, height = size
    image = np.full((height, width, 3), 243, dtype=np.uint8)
    x0, y0, x1, y1 = box
    reps_y = -(-(y1 - y0) // he_tile.shape[0])
    reps_x = -(-(x1 - x0) // he_tile.shape[1])
    tiled = np.tile(he_tile, (reps_y, reps_x, 1))
    image[y0:y1, x0:x1] = tiled[: y1 - y0, : x1 - x0]
    return image


def inked(image: np.ndarray, box: tuple[int, int, int, int], colour: str = "blue") -> np.ndarray:
    """``image`` with marker ink of ``colour`` drawn over ``box`` (x0, y0, x1, y1): the ink's
    optical density added to the pixels', as a real marker's."""
    from hespotex.demo.planted_artifacts import INK_OD, from_density, optical_density

    x0, y0, x1, y1 = box
    out = image.copy()
    density = optical_density(out[y0:y1, x0:x1]) + 0.9 * np.asarray(INK_OD[colour])
    out[y0:y1, x0:x1] = from_density(density)
    return out


@pytest.fixture(scope="session")
def small_pyramids(tmp_path_factory, he_tile) -> dict[str, Path]:
    """Pyramidal JPEG TIFFs of real H&E pixels: one at 0.25 µm/px with resolution tags,
    one without any resolution (its mpp must come from the sheet), and one at 0.25 µm/px
    mostly under marker ink."""
    from hespotex.io.pyramids import write_pyramid_tiff

    folder = tmp_path_factory.mktemp("pyramids")
    tagged = folder / "tagged-40x.tif"
    untagged = folder / "untagged.tif"
    write_pyramid_tiff(tagged, tissue_on_glass(he_tile, (3000, 2400), (400, 300, 2600, 2100)), 0.25)
    write_pyramid_tiff(
        untagged, tissue_on_glass(he_tile, (1800, 1600), (200, 200, 1600, 1400)), None
    )
    # Blue marker over the middle of the tissue, most of it: quality control refuses it.
    inked_slide = folder / "inked.tif"
    tissue = tissue_on_glass(he_tile, (3000, 2400), (400, 300, 2600, 2100))
    write_pyramid_tiff(inked_slide, inked(tissue, (700, 250, 2300, 2150)), 0.25)
    return {"tagged": tagged, "untagged": untagged, "inked": inked_slide}


@pytest.fixture(scope="session")
def ome_zarr_slide(tmp_path_factory, he_tile) -> Path:
    """A small OME-Zarr (NGFF 0.5, Zarr v3) of real H&E pixels at 0.25 µm/px, three levels:
    a dozen 100 µm spots of tissue."""
    from hespotex.io.pyramids import write_ome_zarr

    path = tmp_path_factory.mktemp("ome-zarr") / "he.ome.zarr"
    image = tissue_on_glass(he_tile, (2000, 1800), (250, 250, 1750, 1550))
    write_ome_zarr(path, image, 0.25, "0.5", chunk=256, smallest_level_px=400)
    return path


@pytest.fixture(scope="session")
def demo_sections(tmp_path_factory) -> Path:
    """The planted training sections of HER2ST B4 (b4-left, b4-right): their sheet, beside
    ``heldout.tsv`` (C3)."""
    from hespotex.demo.builder import build_planted

    folder = tmp_path_factory.mktemp("training")
    build_planted(folder, SHARED_DATA)
    return folder / "planted" / "sections.tsv"


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, demo_sections) -> Path:
    """A small checkpoint trained by `hespotex train` on the demo's planted B4 sections."""
    from hespotex.config import parse_config
    from hespotex.io.sections import read_sections_sheet
    from hespotex.network.checkpoint import save_checkpoint
    from hespotex.training.fit import train

    folder = tmp_path_factory.mktemp("trained")
    config = parse_config(
        {
            "encoder": TEST_ENCODER,
            # The planted signal is clean: the previous defaults' lighter regularisation
            # learns it within 60 epochs.
            "training": {
                "gate_epochs": 40,
                "epochs": 60,
                "patience": 15,
                "dropout": 0.5,
                "feature_dropout": 0.5,
                "weight_decay": 1e-3,
                "weight_average": 0.0,
            },
        }
    )
    trained = train(read_sections_sheet(demo_sections), "b4-right", config)
    checkpoint = folder / "model.safetensors"
    save_checkpoint(checkpoint, trained)
    return checkpoint


def run_slide(config, slide_id: str = "svs", path: Path = SVS, outputs: bool = True):
    """A slide through every stage by the engine, as the workflow's jobs run them (the outputs
    stage optional); fails the test with the slide's cause if a stage fails."""
    from hespotex.config import SampleRow
    from hespotex.paths import SlidePaths
    from hespotex.pipeline.engine import Outcome, run_batch
    from hespotex.stage_table import STAGES

    stages = STAGES if outputs else STAGES[:-1]
    (result,) = run_batch(config, [SampleRow(slide_id=slide_id, path=str(path))], stages)
    assert result.status is Outcome.DONE, f"{result.stage} failed: {result.cause}"
    return SlidePaths(config.results, slide_id)


@pytest.fixture(scope="session")
def decoded(tmp_path_factory, trained_checkpoint):
    """The real Aperio slide through every stage with the trained checkpoint."""
    from hespotex.config import parse_config

    results = tmp_path_factory.mktemp("decoded")
    config = parse_config(
        {
            "encoder": TEST_ENCODER,
            "results": str(results),
            "decode": {"checkpoint": str(trained_checkpoint), "spot_chunk": 13},
            "outputs": {"genes": ["PLANTED_HEMATOXYLIN"]},
        }
    )
    return config, run_slide(config)


def unavailable(reason: str, switch: str):
    """Skip a test that needs what this machine lacks, unless the environment variable
    ``switch`` is 1 (CI sets it where the test must run): then fail it."""
    if os.environ.get(switch) == "1":
        pytest.fail(f"{reason} ({switch}=1: this test must run here)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def viewers_python() -> Path:
    """The interpreter with squidpy and spatialdata (`make viewers`; `make test` builds it)."""
    if not VIEWERS_PYTHON.exists():
        unavailable(f"{VIEWERS_PYTHON} is missing (`make viewers` builds it)", REQUIRE_VIEWERS)
    return VIEWERS_PYTHON


def write_sheet(path: Path, rows: list[tuple[str, Path | str, float | None]]) -> Path:
    lines = ["slide_id\tpath\tmpp"]
    lines += [f"{slide_id}\t{file}\t{'' if mpp is None else mpp}" for slide_id, file, mpp in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(folder: Path, sheet: Path, checkpoint: Path | None, **sections) -> Path:
    """A run config with every path absolute, results and logs inside ``folder``."""
    config = {
        "samples": str(sheet),
        "results": str(folder / "results"),
        "logs": str(folder / "logs"),
        "encoder": TEST_ENCODER,
        "decode": {"checkpoint": str(checkpoint) if checkpoint else None},
        **sections,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def venv_env() -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin first, so rules find
    `hespotex`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
