"""Jobs of many slides in one process: shards of the sheet, slides that fail alone, stages that
are not redone, and the record that makes the next run retry a failed slide."""

import json

import pandas as pd
from conftest import SVS, write_config, write_sheet

from hespotex.cli.main import main
from hespotex.config import SlidesPerJob, load_config, read_sample_sheet
from hespotex.paths import RunPaths, SlidePaths
from hespotex.pipeline.shards import ShardPlan, failed_attempts, write_shard_sheets


def test_shards_cut_the_sheet_in_order_and_know_their_upstream_shards(tmp_path):
    slides = tuple(f"s{index:02d}" for index in range(23))
    plan = ShardPlan(slides, SlidesPerJob(prepare=5, features=2, predict=5))
    assert plan.shards("prepare") == ["00000", "00001", "00002", "00003", "00004"]
    assert len(plan.shards("features")) == 12
    assert plan.slides("features", "00011") == ("s22",)
    assert plan.upstream("features", "00002") == ["00000", "00001"]  # s04 | s05
    assert plan.upstream("predict", "00001") == ["00002", "00003", "00004"]  # s05..s09
    sheet = write_sheet(tmp_path / "samples.tsv", [(slide, SVS, None) for slide in slides])
    samples = read_sample_sheet(sheet)
    run = RunPaths(tmp_path / "results")
    assert len(write_shard_sheets(plan, samples, run)) == 5 + 12 + 5
    assert write_shard_sheets(plan, samples, run) == [], "unchanged sheets are not rewritten"
    rows = read_sample_sheet(run.shard_sheet("predict", "00004"))
    assert list(rows) == ["s20", "s21", "s22"] and rows["s21"].slide_path == SVS


def test_a_shard_records_its_failed_slide_and_the_rerun_redoes_only_it(
    tmp_path, small_pyramids, caplog
):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(small_pyramids["tagged"].read_bytes()[:40_000])
    sheet = write_sheet(
        tmp_path / "samples.tsv",
        [("first", SVS, None), ("broken", broken, None), ("last", small_pyramids["tagged"], None)],
    )
    config_path = write_config(tmp_path, sheet, None)
    config = load_config(config_path)
    run = RunPaths(config.results)
    manifest, failures = (
        run.shard_manifest("prepare", "00000"),
        run.shard_failures("prepare", "00000"),
    )
    shard = [
        "run", "--config", str(config_path), "--stages", "tissue", "tiles", "--shard", str(sheet),
        "--manifest", str(manifest), "--failures", str(failures),
    ]  # fmt: skip
    assert main(shard) == 0, "a failed slide is recorded, not raised"
    outcome = pd.read_csv(manifest, sep="\t", keep_default_na=False)
    assert outcome[["slide_id", "status", "stage"]].values.tolist() == [
        ["first", "done", ""],
        ["broken", "failed", "tissue"],
        ["last", "done", ""],
    ]
    assert "broken.tif" in outcome.loc[1, "cause"]
    logged = (config.logs / "tissue" / "broken.log").read_text()
    assert " ERROR " in logged and "[slide broken]" in logged and "broken.tif" in logged
    assert [json.loads(line)["slide_id"] for line in failures.read_text().splitlines()] == [
        "broken"
    ]
    failed_before = failed_attempts(run, "prepare", "00000")
    finished = {
        path: path.stat().st_mtime_ns
        for slide in ("first", "last")
        for path in (
            SlidePaths(config.results, slide).spots,
            SlidePaths(config.results, slide).tissue_record,
        )
    }
    caplog.set_level("INFO", logger="hespotex.pipeline.engine")
    assert main(shard) == 0
    assert failed_before == 1
    assert failed_attempts(run, "prepare", "00000") == 2, "a new failed attempt is counted"
    assert "first: tissue is done already" in caplog.text
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    by_hand = ["tissue", "first", "broken", "--config", str(config_path)]
    assert main(by_hand) == 1, "named slides: a failure fails the command"
    assert main(["features", "last", "--config", str(config_path)]) == 0


def test_a_slide_waits_for_its_earlier_stage_and_stages_must_follow_each_other(tmp_path, caplog):
    sheet = write_sheet(tmp_path / "samples.tsv", [("svs", SVS, None)])
    config_path = write_config(tmp_path, sheet, None)
    run = RunPaths(tmp_path / "results")
    shard = [
        "run", "--config", str(config_path), "--stages", "features", "--shard", str(sheet),
        "--manifest", str(run.shard_manifest("features", "00000")),
        "--failures", str(run.shard_failures("features", "00000")),
    ]  # fmt: skip
    assert main(shard) == 0
    outcome = pd.read_csv(run.shard_manifest("features", "00000"), sep="\t")
    assert outcome[["status", "stage"]].values.tolist() == [["waiting", "tiles"]]
    assert not run.shard_failures("features", "00000").exists(), "waiting is not failing"
    assert main(["run", "svs", "--config", str(config_path), "--stages", "tissue", "graph"]) == 1
    assert "--stages tissue graph: give consecutive stages" in caplog.text


def test_without_shared_memory_the_job_reads_with_threads(tmp_path, monkeypatch, caplog):
    import hespotex.io.reading_pool
    from hespotex.pipeline.engine import SharedWork

    def no_shared_memory(*args, **kwargs):
        raise OSError(28, "No space left on device", "/dev/shm")

    monkeypatch.setattr(hespotex.io.reading_pool, "ReadingPool", no_shared_memory)
    sheet = write_sheet(tmp_path / "samples.tsv", [("svs", SVS, None)])
    config = load_config(
        write_config(tmp_path, sheet, None, features={"reading": "processes", "num_workers": 2})
    )
    with SharedWork(config) as shared:
        assert shared.reading_pool() is None and shared.reading_pool() is None
    assert caplog.text.count("no reading pool processes") == 1
