# Config and sample sheet are validated here, before any job starts, by the package's own
# pydantic models (the only validators: a JSON-schema check beside them would add nothing a
# user sees and cost every Snakemake start its import). Every path comes from hespotex.paths,
# so the rules and the `hespotex` commands agree on file names. A job runs a shard of slides
# (hespotex.pipeline.shards); a slide that fails is recorded and the job goes on.
import subprocess
import sys

from hespotex.pipeline.preflight import check_run, write_run_config
from hespotex.pipeline.shards import ShardPlan, failed_attempts, previous_job, write_shard_sheets
from hespotex.config import parse_config, read_sample_sheet
from hespotex.errors import HespotexError
from hespotex.outputs import spatialdata_export
from hespotex.outputs.cohort import failure_report
from hespotex.stage_table import JOBS
from hespotex.paths import CohortPaths, LogPaths, RunPaths, SlidePaths


try:
    SETTINGS = parse_config(config, "config")
    # A SLURM job's own Snakemake only needs the DAG of its job: the main process has checked
    # the run (checkpoint, weights, viewers' Python) and written the shard sheets already.
    SAMPLES = read_sample_sheet(SETTINGS.samples) if workflow.remote_exec else check_run(SETTINGS)
except HespotexError as error:
    raise WorkflowError(str(error)) from None


class SnakemakePatterns:
    """A path layer's paths (with wildcards such as `{shard}`) as the strings Snakemake's
    directives take."""

    def __init__(self, paths):
        self._paths = paths

    def __getattr__(self, name):
        path = getattr(self._paths, name)
        if callable(path):
            return lambda *args: str(path(*args))
        return str(path)


RUN_PATHS = RunPaths(SETTINGS.results)
PLAN = ShardPlan(tuple(SAMPLES), SETTINGS.slides_per_job)
if not workflow.remote_exec:
    write_shard_sheets(PLAN, SAMPLES, RUN_PATHS)
    write_run_config(SETTINGS, RUN_PATHS.config)
RUN = SnakemakePatterns(RUN_PATHS)
PATHS = SnakemakePatterns(SlidePaths(SETTINGS.results, "{slide}"))
COHORT = SnakemakePatterns(CohortPaths(SETTINGS.results))
LOGS = SnakemakePatterns(LogPaths(SETTINGS.logs))
RUN_CONFIG = str(RUN_PATHS.config)
ENV = "../../envs/hespotex.yaml"
SPATIALDATA_EXPORTER = spatialdata_export.__file__


def cluster_resources(job, slides, gpus=0, stages=1):
    """What a job of `slides` slides asks a cluster for (the SLURM executor plugin reads these
    names): one slide's CPUs and memory, since the slides run one after another, and the run
    time of every slide's `stages`."""
    cluster = SETTINGS.cluster
    requested = {
        "cpus_per_task": job.cpus,
        "mem_mb": job.mem_mb,
        "runtime": job.runtime_min * stages * slides,
        "slurm_partition": cluster.partition,
        "slurm_account": cluster.account,
        "gpu": gpus or None,
    }
    return {name: value for name, value in requested.items() if value is not None}


wildcard_constraints:
    shard=r"\d+",


def manifests(job, shards=None):
    return [RUN.shard_manifest(job, shard) for shard in shards or PLAN.shards(job)]


def upstream_manifests(job):
    """A shard's input: the manifests of the upstream shards that hold its slides."""
    return lambda wildcards: manifests(previous_job(job), PLAN.upstream(job, wildcards.shard))


def shard_slide_files(wildcards):
    """The shard's local slide files that exist: a replaced slide makes its shard rerun; a
    missing one fails its own tissue stage, naming it, instead of stopping the cohort at DAG
    time. Remote slides are fetched by the jobs themselves (hespotex.io.remote)."""
    samples = (SAMPLES[slide_id] for slide_id in PLAN.slides("prepare", wildcards.shard))
    paths = (sample.slide_path for sample in samples if not sample.is_remote)
    return [str(path) for path in paths if path.exists()]


def failed_attempts_of(job):
    """The shard's failed slide attempts: grows when a slide fails, so the next run retries
    the shard (its finished slides are not redone: their stage records are current)."""
    return lambda wildcards: failed_attempts(RUN_PATHS, job, wildcards.shard)


def shard_command(job):
    stages = " ".join(JOBS[job])
    return (
        f"hespotex run --config {{params.config}} --stages {stages} --shard {{input.sheet}}"
        " --manifest {output.manifest} --failures {params.failures} > {log} 2>&1"
    )
