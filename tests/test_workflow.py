"""End to end: the real `snakemake` on small cohorts of real slides, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import (
    DICOM_FOLDER,
    OME_TIFF,
    OPENSLIDE_REJECTS,
    REPO,
    SVS,
    venv_env,
    write_config,
    write_sheet,
)

from hespotex.paths import CohortPaths, RunPaths, SlidePaths
from hespotex.stage_table import STAGES

pytestmark = pytest.mark.e2e
# The cohort of `cohort_run`: every reader, an OME-Zarr folder included.
COHORT_SLIDES = ("svs", "dicom", "ome", "tagged", "untagged", "omezarr")
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake_command(workdir: Path, config: Path, *args: str) -> list[str]:
    return [
        SNAKEMAKE,
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config),
        *args,
    ]  # fmt: skip


def run_snakemake(workdir: Path, config: Path, *args: str, timeout: int = 900):
    return subprocess.run(
        snakemake_command(workdir, config, *args),
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def outputs_of(results: Path, slide_id: str) -> list[Path]:
    paths = SlidePaths(results, slide_id)
    return [
        paths.tissue_mask,
        paths.thumbnail,
        paths.tissue_qc,
        paths.tissue_record,
        paths.artifacts_mask,
        paths.spots,
        paths.dropped_spots,
        paths.spot_qc,
        paths.quality_picture,
        paths.features,
        paths.graph,
        paths.expression,
        paths.qupath,
        paths.heatmaps,
        paths.top_patches,
        paths.qc,
        *(paths.stage_record(stage) for stage in STAGES),
    ]


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory, small_pyramids, ome_zarr_slide, trained_checkpoint):
    folder = tmp_path_factory.mktemp("cohort")
    sheet = write_sheet(
        folder / "samples.tsv",
        [
            ("svs", SVS, None),
            ("dicom", DICOM_FOLDER, None),
            ("ome", OME_TIFF, None),
            ("tagged", small_pyramids["tagged"], None),
            ("untagged", small_pyramids["untagged"], 0.5),
            ("omezarr", ome_zarr_slide, None),
        ],
    )
    config = write_config(
        folder,
        sheet,
        trained_checkpoint,
        outputs={"genes": ["PLANTED_HEMATOXYLIN"]},
    )
    result = run_snakemake(folder, config, "--cores", "2")
    return folder, config, result


def test_snakemake_runs_the_cohort_to_expression_maps(cohort_run):
    folder, _, result = cohort_run
    assert result.returncode == 0, result.stderr[-3000:]
    results = folder / "results"
    for slide_id in COHORT_SLIDES:
        for path in outputs_of(results, slide_id):
            assert path.exists(), path
        for stage in STAGES:
            assert (folder / "logs" / stage / f"{slide_id}.log").is_file()
        adata = ad.read_h5ad(SlidePaths(results, slide_id).expression)
        assert adata.n_obs > 0 and adata.n_vars == 32
        assert slide_id in adata.uns["spatial"]
        assert (SlidePaths(results, slide_id).heatmaps / "PLANTED_HEMATOXYLIN.png").is_file()
    assert not list(results.rglob("*.tmp"))
    untagged = ad.read_h5ad(SlidePaths(results, "untagged").expression)
    assert untagged.uns["hespotex"]["mpp_source"] == "sample sheet"
    zarr_qc = json.loads(SlidePaths(results, "omezarr").qc.read_text())
    assert zarr_qc["reader"] == "ome-zarr" and zarr_qc["mpp"] == pytest.approx(0.25)
    assert zarr_qc["mpp_source"] == "slide metadata (ome-zarr)"
    assert zarr_qc["stain_check"]["verdict"] == "H&E" and zarr_qc["spots"] >= 4
    features_log = (folder / "logs" / "features" / "svs.log").read_text()
    assert "RANDOM weights" in features_log


def test_cohort_tables_cover_every_slide(cohort_run):
    folder, _, result = cohort_run
    assert result.returncode == 0, result.stderr[-3000:]
    cohort = CohortPaths(folder / "results")
    summary = pd.read_csv(cohort.summary, sep="\t", index_col="slide_id")
    assert list(summary.index) == list(COHORT_SLIDES)
    assert (summary["status"] == "done").all()
    assert (summary[[f"{stage}_s" for stage in STAGES]] > 0).all().all()
    assert summary.loc["untagged", "mpp_source"] == "sample sheet"
    assert (summary["qc_verdict"] == "pass").all()
    assert (summary[["ink_share", "spots_dropped", "ink_area_mm2"]] == 0).all().all()
    pseudobulk = pd.read_csv(cohort.pseudobulk, sep="\t", index_col="slide_id")
    assert list(pseudobulk.index) == list(summary.index)
    for slide_id in summary.index:
        adata = ad.read_h5ad(SlidePaths(folder / "results", slide_id).expression)
        assert summary.loc[slide_id, "spots"] == adata.n_obs
        assert np.allclose(
            pseudobulk.loc[slide_id, adata.var_names], adata.X.mean(axis=0), rtol=1e-5
        )


def test_snakemake_report_gathers_qc_heatmaps_top_patches_and_the_summary(cohort_run):
    folder, config, _ = cohort_run
    report = folder / "report.html"
    result = run_snakemake(folder, config, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text()
    for category in ("Quality control", "Tissue QC", "Heatmaps", "Top patches", "Cohort"):
        assert category in html
    assert html.count("quality.png") >= len(COHORT_SLIDES)
    # A heatmap and a montage per slide.
    assert html.count("PLANTED_HEMATOXYLIN.png") >= 2 * len(COHORT_SLIDES)
    for slide_id in COHORT_SLIDES:
        assert slide_id in html
    assert "summary.tsv" in html


def test_the_same_pixels_in_svs_and_dicom_give_the_same_map(cohort_run):
    folder, _, _ = cohort_run
    svs = ad.read_h5ad(SlidePaths(folder / "results", "svs").expression)
    dicom = ad.read_h5ad(SlidePaths(folder / "results", "dicom").expression)
    assert svs.shape == dicom.shape
    assert np.allclose(svs.obsm["spatial"], dicom.obsm["spatial"])
    assert np.corrcoef(svs.X.ravel(), dicom.X.ravel())[0, 1] > 0.99


VIEWERS_CHECK = """
import sys
import anndata as ad
import numpy as np
import spatialdata
import squidpy as sq
from spatialdata.transformations import get_transformation

results, slides = sys.argv[1], sys.argv[2:]
for slide in slides:
    adata = ad.read_h5ad(f"{results}/{slide}/expression.h5ad")
    sq.gr.spatial_neighbors(adata)
    degree = np.asarray(adata.obsp["spatial_connectivities"].sum(axis=1)).ravel()
    assert degree.max() == 6, (slide, degree.max())  # the hexagonal grid, read as Visium's
    data = spatialdata.read_zarr(f"{results}/{slide}/spatialdata.zarr")
    table = data.tables["expression"]
    spots = data.shapes[f"{slide}_spots"]
    assert table.shape == adata.shape and len(spots) == adata.n_obs
    assert np.allclose(table.X, adata.X)
    assert np.allclose(np.c_[spots.geometry.x, spots.geometry.y], adata.obsm["spatial"])
    image = data.images[slide]["scale0"]["image"]
    scale = get_transformation(data.images[slide], "global").scale
    height, width = np.array(image.shape[1:]) * scale[1:]
    assert (spots.geometry.x < width).all() and (spots.geometry.y < height).all()
    print(slide, "ok", table.shape, len(data.images[slide]))
"""


def test_spatialdata_zarr_and_h5ad_open_in_spatialdata_and_squidpy(cohort_run, viewers_python):
    folder, config, _ = cohort_run
    settings = yaml.safe_load(config.read_text())
    settings["outputs"] = {
        **settings.get("outputs", {}),
        "spatialdata": True,
        "spatialdata_python": str(viewers_python),
    }
    with_spatialdata = folder / "config-spatialdata.yaml"
    with_spatialdata.write_text(yaml.safe_dump(settings))
    result = run_snakemake(folder, with_spatialdata, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    slides = ["svs", "tagged", "untagged"]  # not ome: 6 spots, fewer than squidpy grid needs
    check = subprocess.run(
        [str(viewers_python), "-c", VIEWERS_CHECK, str(folder / "results"), *slides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.count(" ok ") == len(slides)


def test_a_finished_run_has_nothing_left_to_do(cohort_run):
    folder, config, _ = cohort_run
    result = run_snakemake(folder, config, "--cores", "2", "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_snakemake_lint_is_clean(cohort_run):
    folder, config, _ = cohort_run
    result = run_snakemake(folder, config, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, trained_checkpoint):
    sheet = write_sheet(tmp_path / "samples.tsv", [("svs", SVS, None)])
    config = write_config(tmp_path, sheet, trained_checkpoint, grid={"spacing_um": -100})
    result = run_snakemake(tmp_path, config, "--cores", "1")
    assert result.returncode != 0
    assert "spacing_um" in result.stderr
    assert not (tmp_path / "results" / "svs").exists()


def test_bad_sample_sheet_stops_before_any_job_naming_the_row(tmp_path, trained_checkpoint):
    sheet = write_sheet(tmp_path / "samples.tsv", [("svs", SVS, None), ("svs", OME_TIFF, None)])
    config = write_config(tmp_path, sheet, trained_checkpoint)
    result = run_snakemake(tmp_path, config, "--cores", "1")
    assert result.returncode != 0
    assert "duplicate slide_id 'svs'" in result.stderr
    assert not (tmp_path / "results" / "svs").exists()


def test_bad_slides_fail_alone_and_the_next_run_retries_only_them(
    tmp_path, small_pyramids, trained_checkpoint
):
    """Bad slides in the middle of one batch (every job here runs all five slides): the good
    slide is finished in the same run, the run ends with an error naming the bad ones, and a
    rerun retries only them; once a file is repaired, the rerun finishes it. The slide mostly
    under ink is refused by quality control, its QC picture in the gallery for review."""
    truncated = tmp_path / "truncated.tif"
    data = small_pyramids["tagged"].read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    missing = tmp_path / "gone.svs"
    sheet = write_sheet(
        tmp_path / "samples.tsv",
        [
            ("truncated", truncated, None),
            ("good", SVS, None),
            ("rejected", OPENSLIDE_REJECTS, None),
            ("missing", missing, None),
            ("inked", small_pyramids["inked"], None),
        ],
    )
    config = write_config(tmp_path, sheet, trained_checkpoint)
    result = run_snakemake(tmp_path, config, "--cores", "2")
    assert result.returncode != 0
    assert "4 of 5 slide(s) failed" in result.stderr
    results = tmp_path / "results"
    assert SlidePaths(results, "good").expression.is_file()
    causes = {
        "truncated": str(truncated),
        "rejected": "Couldn't get image flavor",
        "missing": "does not exist",
        "inked": "the slide's tissue is mostly under ink",
    }
    stages = {slide_id: "tissue" for slide_id in causes} | {"inked": "tiles"}
    for slide_id, cause in causes.items():
        assert not SlidePaths(results, slide_id).expression.exists()
        logs = "".join(p.read_text() for p in (tmp_path / "logs").glob(f"*/{slide_id}.log"))
        error_lines = [line for line in logs.splitlines() if " ERROR " in line]
        assert error_lines, f"no error logged for {slide_id}"
        assert any(cause in line for line in error_lines), error_lines
        assert any(f"[slide {slide_id}]" in line for line in error_lines)
        assert f"  {slide_id}: {stages[slide_id]}: " in result.stderr
    assert not list(results.rglob("*.tmp"))
    cohort = CohortPaths(results)
    summary = pd.read_csv(cohort.summary, sep="\t", index_col="slide_id", keep_default_na=False)
    assert summary.loc["good", "status"] == "done"
    for slide_id, cause in causes.items():
        assert summary.loc[slide_id, "status"] == "failed"
        assert summary.loc[slide_id, "failed_stage"] == stages[slide_id]
        assert cause in summary.loc[slide_id, "reason"]
    assert summary.loc["inked", "qc_verdict"] == "fail: ink"
    assert float(summary.loc["inked", "ink_share"]) > 0.5
    assert not SlidePaths(results, "inked").spots.exists()
    gallery = cohort.gallery("quality")
    assert sorted(path.parent.name for path in gallery.glob("*/quality.png")) == ["good", "inked"]
    assert list(pd.read_csv(cohort.pseudobulk, sep="\t", index_col=0).index) == ["good"]

    finished = {path: path.stat().st_mtime_ns for path in outputs_of(results, "good")}
    retry = run_snakemake(tmp_path, config, "--cores", "2")
    assert retry.returncode != 0 and "4 of 5 slide(s) failed" in retry.stderr
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
    failures = RunPaths(results).shard_failures("prepare", "00000").read_text().splitlines()
    assert sorted(json.loads(line)["slide_id"] for line in failures) == sorted(2 * list(causes))

    truncated.write_bytes(data)
    repaired = run_snakemake(tmp_path, config, "--cores", "2")
    assert repaired.returncode != 0 and "3 of 5 slide(s) failed" in repaired.stderr
    for path in outputs_of(results, "truncated"):
        assert path.exists(), path
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"


def test_sigkill_during_features_then_rerun_incomplete_finishes_without_redoing(
    tmp_path, small_pyramids, trained_checkpoint
):
    """A features job of two slides killed while writing the second: the first slide's store,
    finished by the killed job, is kept and not recomputed by the resumed run."""
    sheet = write_sheet(
        tmp_path / "samples.tsv",
        [("first", SVS, None), ("second", small_pyramids["tagged"], None)],
    )
    config = write_config(tmp_path, sheet, trained_checkpoint, grid={"spacing_um": 40.0})
    results = tmp_path / "results"
    first, second = SlidePaths(results, "first"), SlidePaths(results, "second")
    partial = second.features.with_name(second.features.name + ".tmp")
    process = subprocess.Popen(
        snakemake_command(tmp_path, config, "--cores", "1"),
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert partial.exists(), "the features of 'second' were never seen being written"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not second.features.exists(), "a partial feature store looks finished"
    assert first.features.is_dir() and first.stage_record("features").is_file()
    kept = [first.spots, first.features, first.stage_record("features")]
    finished_mtimes = {path: path.stat().st_mtime_ns for path in kept}

    assert run_snakemake(tmp_path, config, "--unlock").returncode == 0
    resumed = run_snakemake(tmp_path, config, "--cores", "2", "--rerun-incomplete")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for slide in ("first", "second"):
        for path in outputs_of(results, slide):
            assert path.exists(), path
    assert not partial.exists()
    for path, mtime in finished_mtimes.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
    adata = ad.read_h5ad(second.expression)
    assert adata.n_obs == len(second.spots.read_text().splitlines()) - 1
