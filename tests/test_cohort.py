"""Cohort tables: summary.tsv statuses from qc.json and logs; pseudobulk.tsv means via dask."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
from conftest import TEST_ENCODER, write_sheet

from hespotex.config import parse_config
from hespotex.errors import InputDataError
from hespotex.outputs.cohort import run_cohort, slide_mean_expression, write_pseudobulk
from hespotex.paths import CohortPaths, LogPaths, SlidePaths

GENES = ["GENE_A", "GENE_B", "GENE_C"]


def write_expression(path, values, sparse=False) -> None:
    matrix = scipy.sparse.csr_matrix(values) if sparse else values.astype(np.float32)
    adata = ad.AnnData(X=matrix, var=pd.DataFrame(index=GENES[: values.shape[1]]))
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)


def test_slide_means_are_read_in_chunks_for_dense_and_sparse_maps(tmp_path, monkeypatch):
    import hespotex.outputs.cohort

    monkeypatch.setattr(hespotex.outputs.cohort, "READ_CHUNK_BYTES", 7 * 3 * 4)
    values = np.random.default_rng(0).gamma(2.0, size=(50, 3))
    values[values < 1.5] = 0
    write_expression(tmp_path / "dense.h5ad", values)
    write_expression(tmp_path / "sparse.h5ad", values, sparse=True)
    for name in ("dense.h5ad", "sparse.h5ad"):
        genes, means = slide_mean_expression(tmp_path / name)
        assert genes == GENES
        assert np.allclose(means, values.mean(axis=0), rtol=1e-6)


def test_pseudobulk_has_one_row_per_slide_across_windows(tmp_path, monkeypatch):
    import hespotex.outputs.cohort

    monkeypatch.setattr(hespotex.outputs.cohort, "SLIDES_PER_WINDOW", 2)
    rng = np.random.default_rng(1)
    entries, expected = [], {}
    for index in range(5):
        values = rng.normal(5.0, 1.0, size=(10 + index, 3))
        path = tmp_path / f"s{index}.h5ad"
        write_expression(path, values)
        entries.append((f"s{index}", path))
        expected[f"s{index}"] = values.mean(axis=0)
    out = tmp_path / "pseudobulk.tsv"
    assert write_pseudobulk(entries, out) == (5, 3)
    table = pd.read_csv(out, sep="\t", index_col=0)
    assert list(table.index) == [f"s{index}" for index in range(5)]
    assert list(table.columns) == GENES
    for slide_id, means in expected.items():
        assert np.allclose(table.loc[slide_id], means, rtol=1e-5)


def test_pseudobulk_refuses_slides_with_other_genes_naming_the_file(tmp_path):
    write_expression(tmp_path / "a.h5ad", np.ones((4, 3)))
    write_expression(tmp_path / "b.h5ad", np.ones((4, 2)))
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(b"not hdf5")
    out = tmp_path / "pseudobulk.tsv"
    entries = [("a", tmp_path / "a.h5ad"), ("b", tmp_path / "b.h5ad")]
    with pytest.raises(InputDataError, match="b.h5ad.*mixes checkpoints"):
        write_pseudobulk(entries, out)
    with pytest.raises(InputDataError, match="broken.h5ad.*not a readable expression map"):
        write_pseudobulk([("broken", broken)], out)
    assert not out.exists()


def test_summary_says_done_failed_with_the_logged_error_or_not_run(tmp_path):
    sheet = write_sheet(
        tmp_path / "samples.tsv",
        [(name, f"{name}.svs", None) for name in ("good", "bad", "killed", "later")],
    )
    config = parse_config(
        {
            "samples": str(sheet),
            "results": str(tmp_path / "results"),
            "logs": str(tmp_path / "logs"),
            "encoder": TEST_ENCODER,
        }
    )
    good = SlidePaths(config.results, "good")
    write_expression(good.expression, np.full((4, 3), 2.0))
    qc = {
        "spots": 4,
        "tissue_area_mm2": 1.25,
        "mpp": 0.5,
        "mpp_source": "sample sheet",
        "total_seconds": 3.0,
        "timings": {stage: {"seconds": 0.6} for stage in ("tissue", "tiles", "features")},
    }
    good.qc.write_text(json.dumps(qc))
    bad = SlidePaths(config.results, "bad")
    bad.stage_record("tissue").parent.mkdir(parents=True)
    bad.stage_record("tissue").write_text("{}")
    log = LogPaths(config.logs).stage("tiles", "bad")
    log.parent.mkdir(parents=True)
    log.write_text(
        "2026-01-01 INFO hespotex.stages.tiles: start\n"
        "2026-01-01 ERROR hespotex: tiles failed [slide bad]: bad.svs: no spot has 50% tissue\n"
    )
    killed = LogPaths(config.logs).stage("tissue", "killed")
    killed.parent.mkdir(parents=True, exist_ok=True)
    killed.write_text("2026-01-01 INFO hespotex.stages.tissue: reading the overview\n")

    summary = run_cohort(config).set_index("slide_id")
    assert summary.loc["good", "status"] == "done"
    assert summary.loc["good", "spots"] == 4 and summary.loc["good", "features_s"] == 0.6
    assert summary.loc["bad", "status"] == "failed"
    assert summary.loc["bad", "failed_stage"] == "tiles"
    assert summary.loc["bad", "reason"] == "bad.svs: no spot has 50% tissue"
    assert summary.loc["killed", "status"] == "failed"
    assert "no error logged" in summary.loc["killed", "reason"]
    assert summary.loc["later", "status"] == "not run"
    written = pd.read_csv(CohortPaths(config.results).summary, sep="\t", index_col=0)
    assert list(written.index) == ["good", "bad", "killed", "later"]
    pseudobulk = pd.read_csv(CohortPaths(config.results).pseudobulk, sep="\t", index_col=0)
    assert list(pseudobulk.index) == ["good"]
    assert np.allclose(pseudobulk.loc["good"], 2.0)
