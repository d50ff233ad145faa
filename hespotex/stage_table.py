"""The stages a slide goes through: the one table the paths layer, the engine, the command line
and the Snakefile take the stage list from.

Each stage is a ``hespotex`` sub-command with its own log, runs in one of the workflow's jobs,
and reads and writes the files named here by their ``paths.SlidePaths`` attribute (``slide``
is the slide file itself, ``checkpoint`` the config's ``decode.checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    job: str
    help: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]


STAGE_TABLE = (
    Stage(
        "tissue",
        "prepare",
        "tissue mask, ink and folds, thumbnail and QC overlay",
        reads=("slide",),
        writes=("tissue_mask", "artifacts_mask", "thumbnail", "tissue_record", "tissue_qc"),
    ),
    Stage(
        "tiles",
        "prepare",
        "spot grid over the tissue, each spot's quality control",
        reads=("slide", "tissue_record", "tissue_mask", "artifacts_mask", "thumbnail"),
        writes=("spots", "dropped_spots", "spot_qc", "quality_picture"),
    ),
    Stage(
        "features",
        "features",
        "encode each spot's patch into Zarr",
        reads=("slide", "spots"),
        writes=("features",),
    ),
    Stage(
        "graph",
        "predict",
        "sparse kNN spot graph",
        reads=("features",),
        writes=("graph",),
    ),
    Stage(
        "decode",
        "predict",
        "predict expression → expression.h5ad",
        reads=("tissue_record", "spots", "features", "graph", "thumbnail", "spot_qc", "checkpoint"),
        writes=("expression",),
    ),
    Stage(
        "outputs",
        "predict",
        "heatmaps, top patches, QuPath GeoJSON, then qc.json",
        reads=("slide", "expression", "tissue_record", "tissue_mask", "artifacts_mask", "features"),
        writes=("heatmaps", "top_patches", "qupath", "qc"),
    ),
)

STAGES = tuple(stage.name for stage in STAGE_TABLE)
# The workflow's jobs, each running its stages one after another over a shard of slides.
JOBS = {
    job: tuple(stage.name for stage in STAGE_TABLE if stage.job == job)
    for job in dict.fromkeys(stage.job for stage in STAGE_TABLE)
}
