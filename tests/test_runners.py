"""Encoder runners: ONNX Runtime gives the PyTorch features on real H&E patches."""

import numpy as np
import pytest
import torch
from conftest import SVS, TEST_ENCODER, write_sheet

from hespotex.cli.main import main
from hespotex.config import EncoderConfig, parse_config
from hespotex.encoder.build import load_encoder
from hespotex.encoder.identity import encoder_identity
from hespotex.encoder.runners import OnnxRunner, TorchRunner, build_runner, export_onnx
from hespotex.errors import ConfigError, EncoderMismatchError, InputDataError
from hespotex.io.patches import iter_patch_batches
from hespotex.io.records import read_spots
from hespotex.io.slide import open_slide
from hespotex.io.stores import read_feature_store
from hespotex.paths import SlidePaths
from hespotex.pipeline.preflight import check_run
from hespotex.stages.features import run_features
from hespotex.stages.tiles import run_tiles
from hespotex.stages.tissue import run_tissue

# What the ONNX and PyTorch CPU kernels may disagree by, on unit-length fp32 features; the
# feature store keeps fp16 (≈ 5e-4 resolution at 1), so this is below what is stored.
ONNX_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def real_patches() -> np.ndarray:
    with open_slide(SVS, "svs") as slide:
        plan = slide.plan(112.0, 0.5)
        centres = np.array([[x, y] for y in (600.0, 1200.0) for x in (500.0, 1100.0, 1700.0)])
        return np.concatenate(list(iter_patch_batches(slide, centres, plan, 8, 1)))


@pytest.mark.parametrize(
    "encoder",
    [TEST_ENCODER, {"architecture": "stain-stats", "weights": None}],
    ids=["vit-tiny-32", "stain-stats"],
)
def test_onnx_features_equal_torch_features_on_real_patches(
    tmp_path, real_patches, encoder, capsys
):
    model = load_encoder(EncoderConfig(**encoder))
    path = tmp_path / "encoder.onnx"
    export_onnx(model, path, 224)
    identity = model.identity
    onnx_runner = OnnxRunner(path, identity, "cpu")
    torch_runner = TorchRunner(model, torch.device("cpu"))
    # A batch size other than the export's shows the batch axis is dynamic.
    from_onnx = onnx_runner(real_patches, SVS)
    from_torch = torch_runner(real_patches, SVS)
    assert from_onnx.shape == from_torch.shape == (6, identity.feature_dim)
    difference = np.abs(from_onnx - from_torch).max()
    print(f"{identity.architecture}: max |ONNX − torch| = {difference:.2e}")
    assert difference < ONNX_TOLERANCE
    assert onnx_runner.identity == identity
    assert onnx_runner.providers == ["CPUExecutionProvider"]


def test_onnx_model_from_another_encoder_is_refused(tmp_path):
    model = load_encoder(EncoderConfig(**TEST_ENCODER))
    path = tmp_path / "encoder.onnx"
    export_onnx(model, path, 224)
    other = encoder_identity(EncoderConfig(**{**TEST_ENCODER, "seed": 1}))
    with pytest.raises(
        EncoderMismatchError,
        match=r"encoder\.onnx: made with .*random-seed-0.*"
        r"random-seed-1.*re-export it with `hespotex export-onnx`",
    ):
        OnnxRunner(path, other, "cpu")
    with pytest.raises(ConfigError, match="does not exist"):
        OnnxRunner(tmp_path / "missing.onnx", model.identity, "cpu")
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(InputDataError, match="garbage.onnx: not a loadable ONNX model"):
        OnnxRunner(tmp_path / "garbage.onnx", model.identity, "cpu")


def test_features_stage_runs_the_exported_model(tmp_path):
    results = tmp_path / "results"
    onnx_path = tmp_path / "encoder.onnx"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"encoder: {TEST_ENCODER}\nresults: {results}\n")
    assert main(["export-onnx", "--config", str(config_path), "--out", str(onnx_path)]) == 0
    base = {"encoder": TEST_ENCODER, "results": str(results)}
    onnx_config = parse_config(
        {**base, "features": {"runtime": "onnx", "onnx_model": str(onnx_path), "batch_size": 32}}
    )
    assert isinstance(build_runner(onnx_config), OnnxRunner)
    with open_slide(SVS, "svs") as slide:
        run_tissue(slide, "svs", onnx_config)
        run_tiles(slide, "svs", onnx_config)
        written = run_features(slide, "svs", onnx_config)["spots"]
        paths = SlidePaths(results, "svs")
        from_onnx = read_feature_store(paths.features)
        run_features(slide, "svs", parse_config(base))
        from_torch = read_feature_store(paths.features)
    assert written == len(read_spots(paths.spots)) > 10
    assert from_onnx.features.shape == from_torch.features.shape
    assert np.abs(from_onnx.features - from_torch.features).max() < 2e-3


def test_onnx_runtime_without_a_model_is_a_config_error():
    with pytest.raises(ConfigError, match="onnx_model is required with features.runtime: onnx"):
        parse_config({"encoder": TEST_ENCODER, "features": {"runtime": "onnx"}})


def test_preflight_names_a_missing_onnx_model(tmp_path):
    sheet = write_sheet(tmp_path / "samples.tsv", [("svs", SVS, None)])
    config = parse_config(
        {
            "samples": str(sheet),
            "encoder": TEST_ENCODER,
            "features": {"runtime": "onnx", "onnx_model": str(tmp_path / "absent.onnx")},
        }
    )
    with pytest.raises(ConfigError, match=r"absent.onnx does not exist; write it with `hespotex"):
        check_run(config)


def test_building_an_open_clip_encoder_leaves_transformers_unimported_but_importable():
    """open_clip would import Hugging Face transformers (seconds per features process, per
    slide) for text towers never built here; a caller's own import still works after."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from hespotex.config import EncoderConfig\n"
        "from hespotex.encoder.build import load_encoder\n"
        "load_encoder(EncoderConfig(architecture='vit-tiny-32', weights='random'))\n"
        "assert 'open_clip' in sys.modules and 'transformers' not in sys.modules\n"
        "import transformers\n"
        "print(transformers.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "transformers"
