"""Checks a run passes before any job starts: what would otherwise fail on every slide.

Called by the Snakefile at parse time and by `hespotex check`: the sample sheet, the encoder
weights file, and the checkpoint (readable, trained on this encoder and stain normalisation,
patch geometry and graph k as configured, output genes among the genes it predicts and keeps
under ``outputs.min_gene_pearson``), and the SpatialData interpreter when asked for.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hespotex.config import PipelineConfig, SampleRow, read_sample_sheet
from hespotex.encoder.identity import encoder_identity
from hespotex.encoder.stain import check_stain_config
from hespotex.errors import ConfigError
from hespotex.network.checkpoint import check_checkpoint_encoder, read_checkpoint_meta


def check_run(config: PipelineConfig) -> dict[str, SampleRow]:
    samples = read_sample_sheet(config.samples)
    encoder = encoder_identity(config.encoder)
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
    check_checkpoint_encoder(checkpoint, meta, "the config's encoder", encoder)
    check_stain_config(config.stain, meta.stain, checkpoint)
    expected = {
        "features.patch_px": (config.features.patch_px, meta.patch_px),
        "features.patch_mpp": (config.features.patch_mpp, meta.patch_mpp),
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
    kept = set(meta.genes_kept(config.outputs.min_gene_pearson, config.decode.serve, checkpoint))
    dropped = [gene for gene in config.outputs.genes if gene not in kept]
    if dropped:
        raise ConfigError(
            f"outputs.genes: {', '.join(dropped)} left out by outputs.min_gene_pearson "
            f"{config.outputs.min_gene_pearson} (their {meta.trusted_score()} for the served "
            f"model, decode.serve: {config.decode.serve.value}, in checkpoint {checkpoint} is "
            "lower or missing)"
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
    from hespotex.io.atomic import write_json

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
