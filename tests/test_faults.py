"""Faults a 10,000-slide cohort always meets: each ends in a clear error naming the file and
the cause, and leaves nothing partial that looks finished. docs/faults.md lists them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REQUIRE_MOUNT, SVS, TEST_ENCODER, tissue_on_glass, unavailable, venv_env

from hespotex.config import EncoderConfig, parse_config
from hespotex.encoder.build import load_encoder
from hespotex.encoder.runners import TorchRunner, encode_batch
from hespotex.errors import (
    CheckpointError,
    ConfigError,
    EncoderMemoryError,
    NoTissueError,
    OutputWriteError,
    ResolutionTooCoarseError,
    SlideTooSmallError,
)
from hespotex.io.backends import ArraySlide
from hespotex.io.slide import Slide, open_slide
from hespotex.network.checkpoint import load_checkpoint, read_checkpoint_meta
from hespotex.paths import SlidePaths
from hespotex.pipeline.preflight import check_run
from hespotex.stages.features import encode_patches
from hespotex.stages.tiles import run_tiles
from hespotex.stages.tissue import run_tissue


def _config(tmp_path, **sections):
    return parse_config({"encoder": TEST_ENCODER, "results": str(tmp_path), **sections})


def _array_slide(pixels: np.ndarray, mpp: float, name: str = "made.tif") -> Slide:
    return Slide(ArraySlide(pixels, name), mpp, "test")


def test_slide_far_coarser_than_the_patches_is_refused(tmp_path, he_tile):
    slide = _array_slide(he_tile, 2.0, "coarse.tif")
    with pytest.raises(ResolutionTooCoarseError) as error:
        run_tissue(slide, "coarse", _config(tmp_path))
    assert "coarse.tif" in str(error.value) and "2 µm/px" in str(error.value)
    assert not SlidePaths(tmp_path, "coarse").tissue_record.exists()


def test_slide_smaller_than_one_patch_is_refused(tmp_path, he_tile):
    slide = _array_slide(he_tile[:150, :150], 0.5, "tiny.tif")
    with pytest.raises(SlideTooSmallError, match=r"tiny\.tif: .*smaller than one 112 µm patch"):
        run_tissue(slide, "tiny", _config(tmp_path))


def test_no_tissue_and_tissue_smaller_than_a_spot_fail_at_tiling(tmp_path, he_tile):
    config = _config(tmp_path)
    glass = np.full((2000, 2000, 3), 244, dtype=np.uint8)
    glass_slide = _array_slide(glass, 0.5, "glass.tif")
    run_tissue(glass_slide, "glass", config)
    with pytest.raises(NoTissueError, match=r"glass\.tif: no spot .*tissue found: 0\.000 mm²"):
        run_tiles(glass_slide, "glass", config)
    speck_image = tissue_on_glass(he_tile, (2000, 2000), (900, 900, 960, 960))
    speck = _array_slide(speck_image, 0.5, "speck.tif")
    run_tissue(speck, "speck", config)
    with pytest.raises(NoTissueError, match=r"speck\.tif: no spot"):
        run_tiles(speck, "speck", config)
    assert not SlidePaths(tmp_path, "speck").spots.exists()


class _SmallGpu(torch.nn.Module):
    """An encoder that 'runs out of GPU memory' on batches larger than ``limit``."""

    def __init__(self, encoder, limit: int):
        super().__init__()
        self.encoder, self.limit, self.calls = encoder, limit, []

    def forward(self, images):
        self.calls.append(len(images))
        if len(images) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return self.encoder(images)


def test_gpu_out_of_memory_halves_the_batch_and_the_slide_completes():
    encoder = load_encoder(EncoderConfig(**TEST_ENCODER))
    config = parse_config({"encoder": TEST_ENCODER, "features": {"batch_size": 12}}).features
    with open_slide(SVS, "svs") as slide:
        centres = np.array([[600.0 + 40 * i, 900.0] for i in range(12)])
        cpu = torch.device("cpu")
        expected = np.concatenate(
            [b.features for b in encode_patches(slide, centres, TorchRunner(encoder, cpu), config)]
        )
        small = _SmallGpu(encoder, limit=3)
        small.identity = encoder.identity
        got = np.concatenate(
            [b.features for b in encode_patches(slide, centres, TorchRunner(small, cpu), config)]
        )
    assert np.allclose(got, expected, atol=1e-5)
    assert small.calls[:3] == [12, 6, 3]
    assert max(size for size in small.calls if size <= 3) == 3


def test_gpu_out_of_memory_on_one_patch_is_a_clear_error():
    never = _SmallGpu(load_encoder(EncoderConfig(**TEST_ENCODER)), limit=0)
    with pytest.raises(EncoderMemoryError, match=r"slide\.svs: .*even on one patch"):
        encode_batch(never, torch.rand(4, 3, 224, 224), "slide.svs")


def test_pickled_or_mismatched_checkpoints_are_refused_without_running_them(
    tmp_path, trained_checkpoint
):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    pickled = tmp_path / "model.safetensors"
    torch.save({"state": Payload()}, pickled)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(pickled)
    assert not (tmp_path / "pwned").exists()

    from safetensors.torch import load_file, save_file

    meta = read_checkpoint_meta(trained_checkpoint)
    grown = meta.model_copy(update={"genes": [*meta.genes, "EXTRA"], "gene_scores": {}})
    mismatched = tmp_path / "mismatched.safetensors"
    save_file(
        load_file(str(trained_checkpoint)), str(mismatched), {"hespotex": grown.model_dump_json()}
    )
    with pytest.raises(CheckpointError, match=r"mismatched\.safetensors: weights do not match"):
        load_checkpoint(mismatched)


def test_missing_weights_file_fails_before_any_job(tmp_path, trained_checkpoint):
    sheet = tmp_path / "s.tsv"
    sheet.write_text(f"slide_id\tpath\nsvs\t{SVS}\n")
    config = parse_config(
        {
            "samples": str(sheet),
            "encoder": {"architecture": "vit-b-32", "weights": str(tmp_path / "quilt.bin")},
            "decode": {"checkpoint": str(trained_checkpoint)},
        }
    )
    with pytest.raises(ConfigError, match=r"encoder\.weights: .*quilt\.bin does not exist"):
        check_run(config)


def test_sample_row_missing_its_path_names_the_line(tmp_path):
    from hespotex.config import read_sample_sheet

    sheet = tmp_path / "s.tsv"
    sheet.write_text("slide_id\tpath\tmpp\nok\ta.svs\t\nbroken\n")
    with pytest.raises(ConfigError, match=r"line 3: path"):
        read_sample_sheet(sheet)


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}", REQUIRE_MOUNT)
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_is_a_clear_error_and_leaves_nothing_that_looks_finished(small_disk):
    config = _config(small_disk, tissue={"mask_mpp": 2.0})
    with open_slide(SVS, "svs") as slide, pytest.raises(OutputWriteError) as error:
        run_tissue(slide, "svs", config)
    assert "No space left on device" in str(error.value)
    assert str(small_disk) in str(error.value)
    leftovers = [path for path in small_disk.rglob("*") if path.is_file()]
    assert not [path for path in leftovers if path.name.endswith(".tmp")]
    assert not SlidePaths(small_disk, "svs").tissue_record.exists()


def test_sigkill_during_the_h5ad_write_leaves_no_finished_looking_file(tmp_path):
    target = tmp_path / "expression.h5ad"
    script = textwrap.dedent(
        f"""
        import os, signal
        import anndata as ad
        import numpy as np
        from hespotex.io.atomic import atomic_path

        def write_then_die(self, path, *args, **kwargs):
            with open(path, "wb") as handle:
                handle.write(b"half an HDF5 file")
                handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        ad.AnnData.write_h5ad = write_then_die
        with atomic_path({str(target)!r}) as tmp:
            ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(tmp)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], env=venv_env(), timeout=120)
    assert killed.returncode == -9
    assert not target.exists()
    assert target.with_name("expression.h5ad.tmp").exists()

    from hespotex.io.atomic import atomic_path

    with atomic_path(target) as tmp:
        import anndata as ad

        ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(tmp)
    assert ad.read_h5ad(target).shape == (3, 2)
    assert not target.with_name("expression.h5ad.tmp").exists()
