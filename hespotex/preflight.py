"""Checks a run passes before any job starts: what would otherwise fail on every slide.

Called by the Snakefile at parse time and by `hespotex check`: the sample sheet, the encoder
weights file, and the checkpoint (readable, trained on this encoder, patch geometry and graph
k as configured, output genes among its genes), and the SpatialData interpreter when asked for.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hespotex.checkpoint import check_encoder_matches, read_checkpoint_meta
from hespotex.checksum import file_sha256
from hespotex.config import PipelineConfig, SampleRow, read_sample_sheet
from hespotex.errors import ConfigError


def encoder_weights_id(config: PipelineConfig) -> str:
    if not config.encoder.architecture.needs_weights:
        return "weights-free"
    if config.encoder.is_random:
        return f"random-seed-{config.encoder.seed}"
    weights = Path(config.encoder.weights)
    if not weights.is_file():
        raise ConfigError(f"encoder.weights: {weights} does not exist")
    return file_sha256(weights)


def check_run(config: PipelineConfig) -> dict[str, SampleRow]:
    samples = read_sample_sheet(config.samples)
    weights_id = encoder_weights_id(config)
    onnx_model = config.features.onnx_model
    if config.features.runtime == "onnx" and not Path(onnx_model).is_file():
        raise ConfigError(
            f"features.onnx_model: {onnx_model} does not exist; "
            "write it with `hespotex export-onnx`"
        )
    checkpoint = config.decode.checkpoint
    if checkpoint is None:
        raise ConfigError("decode.checkpoint is not set: train one with `hespotex train`")
    meta = read_checkpoint_meta(checkpoint)
    check_encoder_matches(
        checkpoint, meta, config.encoder.architecture.value, weights_id, "the config's encoder"
    )
    expected = {
        "features.patch_px": (config.features.patch_px, meta.encoder.patch_px),
        "features.patch_mpp": (config.features.patch_mpp, meta.encoder.patch_mpp),
        "graph.k": (config.graph.k, meta.graph_k),
    }
    for key, (configured, trained) in expected.items():
        if configured != trained:
            raise ConfigError(
                f"{key} is {configured} but checkpoint {checkpoint} was trained with {trained}"
            )
    unknown = [gene for gene in config.outputs.genes if gene not in meta.genes]
    if unknown:
        raise ConfigError(
            f"outputs.genes: {', '.join(unknown)} not predicted by checkpoint {checkpoint}"
        )
    if config.outputs.spatialdata:
        check_spatialdata_python(config.outputs.spatialdata_python)
    return samples


def check_spatialdata_python(python: Path | None) -> None:
    """The interpreter exists and has spatialdata (found without importing it: this runs at
    every Snakefile parse)."""
    hint = "`make viewers` builds one: outputs.spatialdata_python: .venv-viewers/bin/python"
    if python is None:
        raise ConfigError(
            f"outputs.spatialdata is on but outputs.spatialdata_python is not set; {hint}"
        )
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('spatialdata') is None)"
    try:
        found = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60)
    except OSError as error:
        raise ConfigError(f"outputs.spatialdata_python: {python} cannot run: {error}") from None
    if found.returncode != 0:
        raise ConfigError(f"outputs.spatialdata_python: {python} has no spatialdata; {hint}")


def write_run_config(config: PipelineConfig, path: Path) -> Path:
    """The validated config as JSON for the rules' `hespotex` calls; rewritten only when it
    changes, so an unchanged config never touches a file's time stamp."""
    from hespotex.atomic import write_json

    payload = config.model_dump(mode="json")
    path = Path(path)
    if path.is_file():
        try:
            if json.loads(path.read_text()) == payload:
                return path
        except json.JSONDecodeError:
            pass
    write_json(path, payload)
    return path
