# Config and sample sheet are validated here, before any job starts, by the package's own
# pydantic models (the only validators: a JSON-schema check beside them would add nothing a
# user sees and cost every Snakemake start its import). Every path comes from hespotex.paths,
# so the rules and the `hespotex` commands agree on file names.
import subprocess
import sys

from hespotex.cli.preflight import check_run, write_run_config
from hespotex.config import SLIDE_ID_PATTERN, parse_config
from hespotex.errors import HespotexError
from hespotex.outputs import spatialdata_export
from hespotex.paths import CohortPaths, LogPaths, SlidePaths


try:
    SETTINGS = parse_config(config, "config")
    SAMPLES = check_run(SETTINGS)
except HespotexError as error:
    raise WorkflowError(str(error)) from None

SLIDES = list(SAMPLES)


class SnakemakePatterns:
    """A path layer's paths (SlidePaths with the `{slide}` wildcard) as the strings
    Snakemake's directives take."""

    def __init__(self, paths):
        self._paths = paths

    def __getattr__(self, name):
        path = getattr(self._paths, name)
        if callable(path):
            return lambda *args: str(path(*args))
        return str(path)


PATHS = SnakemakePatterns(SlidePaths(SETTINGS.results, "{slide}"))
COHORT = SnakemakePatterns(CohortPaths(SETTINGS.results))
LOGS = SnakemakePatterns(LogPaths(SETTINGS.logs))
RUN_CONFIG = str(write_run_config(SETTINGS, SETTINGS.results / ".hespotex" / "config.json"))
ENV = "../../envs/hespotex.yaml"
SPATIALDATA_EXPORTER = spatialdata_export.__file__


def cluster_resources(job, gpus=0, stages=1):
    """What a job asks a cluster for; the SLURM executor plugin reads these names. A rule
    running `stages` of a slide's stages one after another asks for their summed run time."""
    cluster = SETTINGS.cluster
    requested = {
        "slide_slot": 1,
        "cpus_per_task": job.cpus,
        "mem_mb": job.mem_mb,
        "runtime": job.runtime_min * stages,
        "slurm_partition": cluster.partition,
        "slurm_account": cluster.account,
        "gpu": gpus or None,
    }
    return {name: value for name, value in requested.items() if value is not None}


LIGHT_RESOURCES = cluster_resources(SETTINGS.cluster.light)
FEATURES_RESOURCES = cluster_resources(
    SETTINGS.cluster.features, SETTINGS.cluster.gpus_per_features_job
)


wildcard_constraints:
    slide=SLIDE_ID_PATTERN.strip("^$"),


def slide_file(wildcards):
    """The slide as input when it exists; a missing file fails its own tissue stage with a
    message naming it, instead of stopping the whole cohort at DAG building."""
    path = SAMPLES[wildcards.slide].slide_path
    return [str(path)] if path.exists() else []
