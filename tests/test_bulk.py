"""`hespotex evaluate-bulk` on a synthetic cohort whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

from hespotex.cli.main import main
from hespotex.errors import InputDataError
from hespotex.evaluation.bulk import column_correlation, column_spearman, run_evaluate_bulk

SAMPLES = [f"TCGA-AA-{index:04d}-01" for index in range(12)]


@pytest.fixture
def cohort(tmp_path):
    """Pseudo-bulk of 13 slides (two of one sample) and bulk TPM built from it."""
    rng = np.random.default_rng(0)
    slides = [f"{sample}Z-00-DX1" for sample in SAMPLES] + [f"{SAMPLES[0]}Z-00-DX2"]
    predicted = pd.DataFrame(
        rng.normal(4.0, 1.0, size=(len(slides), 4)),
        index=pd.Index(slides, name="slide_id"),
        columns=["LINEAR", "MONOTONE", "OPPOSITE", "UNRELATED"],
    )
    predicted["FLAT"] = 3.0
    per_sample = predicted.groupby([slide[:15] for slide in slides]).mean().loc[SAMPLES]
    logged = pd.DataFrame(index=pd.Index(SAMPLES, name="sample"))
    logged["LINEAR"] = 2 * per_sample["LINEAR"] + 1
    logged["MONOTONE"] = np.exp(per_sample["MONOTONE"]) / 10
    logged["OPPOSITE"] = 10 - per_sample["OPPOSITE"]
    logged["UNRELATED"] = rng.normal(5.0, 1.0, size=len(SAMPLES))
    logged["FLAT"] = rng.normal(5.0, 1.0, size=len(SAMPLES))
    logged["BULK_ONLY"] = 1.0
    bulk = np.expm1(logged)
    mapping = pd.DataFrame({"slide_id": slides, "sample_id": [slide[:15] for slide in slides]})
    paths = {
        "pseudobulk": tmp_path / "pseudobulk.tsv",
        "bulk": tmp_path / "bulk_tpm.tsv",
        "map": tmp_path / "map.tsv",
    }
    predicted.to_csv(paths["pseudobulk"], sep="\t")
    bulk.to_csv(paths["bulk"], sep="\t")
    mapping.to_csv(paths["map"], sep="\t", index=False)
    return paths, per_sample, logged


def test_gene_and_sample_correlations_recover_the_known_relations(cohort, tmp_path):
    paths, per_sample, logged = cohort
    out = tmp_path / "evaluation"
    summary = run_evaluate_bulk(paths["pseudobulk"], paths["bulk"], out, paths["map"])
    genes = pd.read_csv(out / "genes.tsv", sep="\t", index_col="gene")
    assert summary["samples"] == len(SAMPLES) and summary["genes"] == 5
    assert genes.loc["LINEAR", "pearson"] == pytest.approx(1.0)
    assert genes.loc["MONOTONE", "spearman"] == pytest.approx(1.0)
    assert genes.loc["MONOTONE", "pearson"] < 0.999
    assert genes.loc["OPPOSITE", "spearman"] == pytest.approx(-1.0)
    assert abs(genes.loc["UNRELATED", "spearman"]) < 0.7
    assert np.isnan(genes.loc["FLAT", "spearman"])
    assert summary["genes_with_a_correlation"] == 4
    unrelated_p = per_sample["UNRELATED"].to_numpy()
    unrelated_m = logged["UNRELATED"].to_numpy()
    assert genes.loc["UNRELATED", "pearson"] == pytest.approx(
        pearsonr(unrelated_p, unrelated_m).statistic
    )
    assert genes.loc["UNRELATED", "spearman"] == pytest.approx(
        spearmanr(unrelated_p, unrelated_m).statistic
    )
    samples = pd.read_csv(out / "samples.tsv", sep="\t", index_col="sample_id")
    assert list(samples.index) == sorted(SAMPLES)
    common = ["LINEAR", "MONOTONE", "OPPOSITE", "UNRELATED", "FLAT"]
    first = SAMPLES[0]
    assert samples.loc[first, "pearson"] == pytest.approx(
        pearsonr(per_sample.loc[first, common], logged.loc[first, common]).statistic
    )
    assert json.loads((out / "summary.json").read_text())["bulk_log1p"] is True
    assert (out / "best_genes.png").stat().st_size > 5_000


def test_column_correlations_match_scipy_on_ties_and_constants():
    a = np.array([[1.0, 2.0, 5.0], [2.0, 2.0, 5.0], [2.0, 7.0, 5.0], [4.0, 1.0, 5.0]])
    b = np.array([[3.0, 1.0, 1.0], [1.0, 1.0, 2.0], [4.0, 2.0, 3.0], [4.0, 9.0, 4.0]])
    for column in range(2):
        assert column_correlation(a, b)[column] == pytest.approx(
            pearsonr(a[:, column], b[:, column]).statistic
        )
        assert column_spearman(a, b)[column] == pytest.approx(
            spearmanr(a[:, column], b[:, column]).statistic
        )
    assert np.isnan(column_correlation(a, b)[2])
    gappy = a.copy()
    gappy[1, 0] = np.nan
    kept = [0, 2, 3]
    assert column_correlation(gappy, b)[0] == pytest.approx(
        pearsonr(a[kept, 0], b[kept, 0]).statistic
    )
    assert column_spearman(gappy, b)[0] == pytest.approx(
        spearmanr(a[kept, 0], b[kept, 0]).statistic
    )
    assert column_spearman(gappy, b)[1] == pytest.approx(spearmanr(a[:, 1], b[:, 1]).statistic)


def test_tcga_slides_meet_their_samples_by_barcode_without_a_map(cohort, tmp_path):
    paths, _, _ = cohort
    by_map = run_evaluate_bulk(paths["pseudobulk"], paths["bulk"], tmp_path / "map", paths["map"])
    by_barcode = run_evaluate_bulk(paths["pseudobulk"], paths["bulk"], tmp_path / "barcode")
    assert by_map["matched_by"] == "the slide map"
    assert by_barcode["matched_by"].startswith("TCGA barcode")
    assert by_barcode["slides_matched"] == 13 and by_barcode["samples"] == 12
    for key in ("gene_pearson_mean", "gene_spearman_mean", "sample_pearson_mean"):
        assert by_barcode[key] == by_map[key]


def test_unmatched_or_bad_tables_fail_naming_the_file(cohort, tmp_path):
    paths, _, _ = cohort
    table = pd.read_csv(paths["bulk"], sep="\t", index_col=0)
    renamed = tmp_path / "renamed_tpm.tsv"
    table.set_axis([f"SAMPLE-{index}" for index in range(len(table))]).to_csv(renamed, sep="\t")
    with pytest.raises(InputDataError, match="renamed_tpm.tsv.*only 0 sample"):
        run_evaluate_bulk(paths["pseudobulk"], renamed, tmp_path / "out")
    negative = tmp_path / "logged.tsv"
    (np.log1p(table) - 3.0).to_csv(negative, sep="\t")
    with pytest.raises(InputDataError, match="logged.tsv.*--bulk-is-log"):
        run_evaluate_bulk(paths["pseudobulk"], negative, tmp_path / "out", paths["map"])
    other_genes = tmp_path / "other.tsv"
    table.set_axis([f"X{index}" for index in range(table.shape[1])], axis=1).to_csv(
        other_genes, sep="\t"
    )
    with pytest.raises(InputDataError, match="other.tsv.*no gene in common"):
        run_evaluate_bulk(paths["pseudobulk"], other_genes, tmp_path / "out", paths["map"])
    text = tmp_path / "text.tsv"
    text.write_text("sample\tGENE\nA\thigh\n")
    with pytest.raises(InputDataError, match="text.tsv.*non-numeric"):
        run_evaluate_bulk(paths["pseudobulk"], text, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line_writes_the_tables(cohort, tmp_path):
    paths, _, _ = cohort
    out = tmp_path / "cli"
    argv = ["evaluate-bulk", "--pseudobulk", str(paths["pseudobulk"]), "--bulk"]
    argv += [str(paths["bulk"]), "--map", str(paths["map"]), "--out", str(out)]
    assert main(argv) == 0
    assert {path.name for path in out.iterdir()} == {
        "genes.tsv",
        "samples.tsv",
        "summary.json",
        "best_genes.png",
    }
    assert main([*argv[:5], "--out", str(out)]) == 0, "without --map: by TCGA barcode"
    assert json.loads((out / "summary.json").read_text())["matched_by"].startswith("TCGA")
