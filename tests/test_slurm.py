"""The SLURM profile on a real one-node SLURM cluster (tests/slurm/cluster.sh), not a mock.

Every job goes through `sbatch` via snakemake-executor-plugin-slurm. The test cluster has no
GPU, so the features jobs' GPU request is switched off by `cluster.gpus_per_features_job: 0`
in the pipeline config; the profile itself is used unchanged. The cluster has no accounting
storage, hence `--slurm-status-command squeue`. `.ci/run` starts the cluster before the tests;
they skip where none is up, and `.ci/run` sets HESPOTEX_REQUIRE_SLURM=1, which turns that
skip into a failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, REQUIRE_SLURM, SVS, unavailable, venv_env, write_config, write_sheet
from test_workflow import outputs_of, run_snakemake, snakemake_command

from hespotex.io.stores import read_feature_store
from hespotex.paths import RunPaths, SlidePaths

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]
CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
SLURM_PROFILE = str(REPO / "workflow" / "profiles" / "slurm")
# What the one-node test cluster (2 CPUs, no GPU) can give a job.
TEST_CLUSTER = {
    "gpus_per_features_job": 0,
    "light": {"cpus": 1, "mem_mb": 3000, "runtime_min": 5},
    "features": {"cpus": 2, "mem_mb": 6000, "runtime_min": 10},
}


def slurm_is_up() -> bool:
    try:
        states = subprocess.run(
            ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=20
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return states.returncode == 0 and any(
        state in states.stdout for state in ("idle", "mix", "alloc")
    )


@pytest.fixture(scope="module")
def slurm_cluster():
    """The cluster `.ci/run` starts (`tests/slurm/cluster.sh start`, root): installing and
    starting daemons is the CI script's work, not a test's."""
    if not slurm_is_up():
        unavailable(
            f"no SLURM cluster is up (sinfo lists no idle node): start one with "
            f"`{CLUSTER_SCRIPT.relative_to(REPO)} start` (root)",
            REQUIRE_SLURM,
        )


def run_on_slurm(workdir: Path, config: Path, *args: str):
    return run_snakemake(
        workdir,
        config,
        "--profile", SLURM_PROFILE,
        "--slurm-status-command", "squeue",
        *args,
        timeout=1200,
    )  # fmt: skip


def submitted_job_ids(log: str) -> list[str]:
    return re.findall(r"submitted with SLURM jobid (\d+)", log)


def job_state(job_id: str) -> str:
    shown = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    )
    return re.search(r"JobState=(\S+)", shown.stdout)[1]


GOOD_SLIDES = ("svs", "tagged")


def output_mtimes(results: Path) -> dict[Path, int]:
    """Every output of the good slides with its modification time, to show none is redone."""
    return {
        path: path.stat().st_mtime_ns
        for slide_id in GOOD_SLIDES
        for path in outputs_of(results, slide_id)
    }


@pytest.fixture(scope="module")
def local_and_slurm_runs(tmp_path_factory, small_pyramids, trained_checkpoint, slurm_cluster):
    """The same three slides, a corrupt one between two good ones, locally and on SLURM."""
    runs = {}
    for name in ("local", "slurm"):
        folder = tmp_path_factory.mktemp(name)
        corrupt = folder / "corrupt.tif"
        corrupt.write_bytes(small_pyramids["tagged"].read_bytes()[:50_000])
        sheet = write_sheet(
            folder / "samples.tsv",
            [
                ("svs", SVS, None),
                ("corrupt", corrupt, None),
                ("tagged", small_pyramids["tagged"], None),
            ],
        )
        config = write_config(folder, sheet, trained_checkpoint, cluster=TEST_CLUSTER)
        if name == "local":
            result = run_snakemake(folder, config, "--cores", "2")
        else:
            result = run_on_slurm(folder, config)
        log = result.stdout + result.stderr
        assert result.returncode != 0 and "1 of 3 slide(s) failed" in log, log[-3000:]
        runs[name] = (folder, config, sheet, log)
    return runs


def test_every_job_went_through_sbatch_and_the_corrupt_slide_failed_alone(local_and_slurm_runs):
    folder, _, _, log = local_and_slurm_runs["slurm"]
    job_ids = submitted_job_ids(log)
    # Three slides: one prepare (tissue + tiles), one features and one predict (graph +
    # decode + outputs) job, instead of eighteen; then the cohort tables' job. Every job
    # succeeds: the corrupt slide is recorded, not raised.
    assert len(job_ids) == 4, log[-3000:]
    assert all(job_state(job_id) == "COMPLETED" for job_id in job_ids)
    summary = pd.read_csv(
        folder / "results" / "cohort" / "summary.tsv", sep="\t", keep_default_na=False
    )
    assert summary[["slide_id", "status", "failed_stage"]].values.tolist() == [
        ["svs", "done", ""],
        ["corrupt", "failed", "tissue"],
        ["tagged", "done", ""],
    ]
    assert "corrupt.tif" in summary.loc[1, "reason"]
    assert "corrupt: tissue: " in log


def test_the_next_slurm_run_retries_only_the_failed_slide(local_and_slurm_runs):
    folder, config, _, _ = local_and_slurm_runs["slurm"]
    results = folder / "results"
    finished = output_mtimes(results)
    retry = run_on_slurm(folder, config)
    log = retry.stdout + retry.stderr
    assert retry.returncode != 0 and "1 of 3 slide(s) failed" in log, log[-3000:]
    assert submitted_job_ids(log), "the retry went through sbatch"
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
    failures = RunPaths(results).shard_failures("prepare", "00000").read_text().splitlines()
    assert [json.loads(line)["slide_id"] for line in failures] == ["corrupt", "corrupt"]


def test_slurm_results_equal_the_local_run(local_and_slurm_runs):
    local_results = local_and_slurm_runs["local"][0] / "results"
    slurm_results = local_and_slurm_runs["slurm"][0] / "results"
    for slide_id in GOOD_SLIDES:
        for path in outputs_of(slurm_results, slide_id):
            assert path.exists(), path
        local, remote = SlidePaths(local_results, slide_id), SlidePaths(slurm_results, slide_id)
        assert remote.spots.read_text() == local.spots.read_text()
        assert np.array_equal(
            read_feature_store(remote.features).features,
            read_feature_store(local.features).features,
        )
        local_map, remote_map = ad.read_h5ad(local.expression), ad.read_h5ad(remote.expression)
        assert list(remote_map.var_names) == list(local_map.var_names)
        assert np.allclose(remote_map.X, local_map.X, atol=1e-6)


def test_scancel_of_a_running_job_then_rerun_finishes_without_redoing_finished_slides(
    local_and_slurm_runs, small_pyramids
):
    """With the corrupt slide repaired and a slide added, a job is cancelled; the rerun
    finishes both without recomputing the finished slides."""
    folder, config, sheet, _ = local_and_slurm_runs["slurm"]
    results = folder / "results"
    finished = output_mtimes(results)
    (folder / "corrupt.tif").write_bytes(small_pyramids["tagged"].read_bytes())
    with sheet.open("a") as handle:
        handle.write(f"untagged\t{small_pyramids['untagged']}\t0.5\n")
    process = subprocess.Popen(
        snakemake_command(
            folder, config, "--profile", SLURM_PROFILE, "--slurm-status-command", "squeue",
            "--retries", "0",
        ),
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    running = None
    deadline = time.monotonic() + 600
    while running is None and process.poll() is None and time.monotonic() < deadline:
        queue = subprocess.run(
            ["squeue", "--noheader", "--format=%i %T"], capture_output=True, text=True
        ).stdout.split()
        states = dict(zip(queue[::2], queue[1::2], strict=True))
        running = next((job for job, state in states.items() if state == "RUNNING"), None)
        # The job may end between squeue and scancel: then look for the next one.
        if running and subprocess.run(["scancel", running]).returncode != 0:
            running = None
        time.sleep(1)
    assert running is not None, "no job of the new slide was seen running"
    log, _ = process.communicate(timeout=600)
    assert process.returncode != 0, f"the run should fail with its job cancelled: {log[-2000:]}"
    assert job_state(running) == "CANCELLED"
    assert not SlidePaths(results, "untagged").expression.exists()

    assert run_snakemake(folder, config, "--unlock").returncode == 0
    rerun = run_on_slurm(folder, config)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    rerun_log = rerun.stdout + rerun.stderr
    assert submitted_job_ids(rerun_log), "the rerun went through sbatch"
    for slide_id in ("untagged", "corrupt"):
        for path in outputs_of(results, slide_id):
            assert path.exists(), path
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
