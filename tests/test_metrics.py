import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr

from hespotex.errors import InputDataError
from hespotex.evaluation.crossval import fold_plan, summary_tables
from hespotex.evaluation.evaluate import score_genes, summarise
from hespotex.metrics import (
    map_raster,
    mse_per_gene,
    pearson_per_gene,
    pearson_rows,
    spot_pitch,
    ssim_per_gene,
)
from hespotex.network.probe import calibrated, fit_probe, principal_components, ridge_path


def hex_centres(rows: int, columns: int, pitch: float = 100.0) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns].astype(float)
    x = x * pitch + (y % 2) * pitch / 2
    return np.stack([x.ravel(), y.ravel() * pitch * np.sqrt(3) / 2], axis=1)


def test_torch_pearson_of_rows_equals_the_numpy_pearson_of_columns():
    """The training loss and validation score (torch, rows) and the reported scores (numpy,
    columns) are the same Pearson."""
    rng = np.random.default_rng(1)
    measured = rng.normal(size=(40, 6))
    predicted = measured * rng.normal(size=6) + rng.normal(size=(40, 6))
    by_torch = pearson_rows(torch.from_numpy(measured.T), torch.from_numpy(predicted.T))
    assert np.allclose(by_torch.numpy(), pearson_per_gene(measured, predicted), atol=1e-8)


def test_pearson_and_mse_per_gene_match_scipy_and_numpy():
    rng = np.random.default_rng(0)
    measured = rng.normal(size=(60, 4))
    predicted = measured * [1, -2, 0, 0.5] + rng.normal(size=(60, 4))
    predicted[:, 2] = 3.0
    expected = [pearsonr(measured[:, gene], predicted[:, gene])[0] for gene in (0, 1, 3)]
    result = pearson_per_gene(measured, predicted)
    assert np.allclose(result[[0, 1, 3]], expected)
    assert np.isnan(result[2])
    assert np.allclose(mse_per_gene(measured, predicted), ((measured - predicted) ** 2).mean(0))


def test_ssim_is_one_for_identical_maps_and_low_for_unrelated_ones():
    rng = np.random.default_rng(1)
    centres = hex_centres(12, 14)
    assert spot_pitch(centres) == pytest.approx(100.0)
    nearest, scored = map_raster(centres)
    assert scored.sum() > len(centres) and set(np.unique(nearest[scored])) == set(range(168))
    smooth = np.stack([centres[:, 0], centres[:, 1], centres.sum(1)], axis=1)
    assert np.allclose(ssim_per_gene(centres, smooth, smooth), 1.0)
    assert np.allclose(ssim_per_gene(centres, smooth, 2 * smooth + 5), 1.0)
    unrelated = ssim_per_gene(centres, smooth, rng.normal(size=smooth.shape))
    assert np.all(unrelated < 0.3)


def test_scores_summarise_over_all_genes_and_each_gene_set():
    rng = np.random.default_rng(2)
    centres = hex_centres(8, 8)
    measured = rng.normal(size=(64, 5))
    predicted = measured.copy()
    predicted[:, 3:] = rng.normal(size=(64, 2))
    sets = {"top_variance": ["a", "b", "c"], "markers": ["e"]}
    table = score_genes("s", list("abcde"), measured, predicted, centres, sets)
    summary = summarise(table)
    assert table["in_top_variance"].tolist() == [True, True, True, False, False]
    assert table["in_markers"].tolist() == [False, False, False, False, True]
    assert summary["pearson_top_variance"] == pytest.approx(1.0)
    assert summary["pearson_markers"] == pytest.approx(table["pearson"].iloc[4])
    assert summary["pearson_all"] == pytest.approx(table["pearson"].mean())
    assert summary["n_genes"] == 5 and summary["n_top_variance"] == 3 and summary["n_markers"] == 1


def test_probe_recovers_a_linear_map_picks_alpha_on_validation_and_keeps_scale():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(10, 3))
    features = [rng.normal(size=(200, 10)) for _ in range(3)]
    targets = [block @ weights + 0.1 * rng.normal(size=(200, 3)) for block in features]
    probe = fit_probe(features[:2], targets[:2], (features[2], targets[2]))
    assert float(probe.alpha) <= 10 and probe.n_components == 10
    predicted = probe.predict(features[2])
    assert np.all(pearson_per_gene(targets[2], predicted) > 0.99)
    assert np.allclose(predicted.std(axis=0), targets[2].std(axis=0), rtol=0.05)


def test_a_strongly_penalised_probe_is_rescaled_to_its_genes_without_changing_their_pearson():
    """The strongest ridge penalty shrinks predictions towards the mean; the probe puts each
    gene back in scale by its training fit, which leaves Pearson as it was."""
    rng = np.random.default_rng(4)
    features = rng.normal(size=(300, 40))
    targets = features[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(300, 4))
    scores = features - features.mean(axis=0)
    ((_, weight, intercept),) = ridge_path(scores, targets, [1e7])
    shrunk = scores @ weight + intercept
    assert shrunk.std(axis=0).max() < 0.01 * targets.std(axis=0).min()
    weight, intercept = calibrated(scores, targets, weight, intercept)
    rescaled = scores @ weight + intercept
    assert np.allclose(pearson_per_gene(targets, rescaled), pearson_per_gene(targets, shrunk))
    slope = [np.polyfit(rescaled[:, gene], targets[:, gene], 1)[0] for gene in range(4)]
    assert np.allclose(slope, 1.0)
    assert np.allclose(rescaled.mean(axis=0), targets.mean(axis=0))


def test_principal_components_are_the_covariance_eigenvectors_with_a_fixed_sign():
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(500, 6)) * np.array([5, 4, 3, 2, 1, 0.5])
    rows -= rows.mean(axis=0)
    components, variances = principal_components(rows, 3)
    assert components.shape == (6, 3)
    assert np.allclose(components.T @ components, np.eye(3), atol=1e-8)
    assert np.allclose(variances, (rows @ components).var(axis=0, ddof=1))
    assert np.all(np.diff(variances) < 0)
    assert np.all(np.abs(components).argmax(axis=0) == [0, 1, 2])
    assert np.all(components[np.abs(components).argmax(axis=0), range(3)] > 0)


def test_fold_plan_holds_each_section_out_with_a_validation_from_the_rest():
    plan = fold_plan(["B4", "C2", "C3", "C4"])
    assert [fold[0] for fold in plan] == ["B4", "C2", "C3", "C4"]
    for test, validation, training in plan:
        assert validation != test and test not in training and validation not in training
        assert len(training) == 2
    with pytest.raises(InputDataError, match="3 sections or more"):
        fold_plan(["a", "b"])


def test_summary_is_mean_over_folds_then_mean_and_sd_over_seeds_per_gene_set():
    def scores(*values):
        return list(values)

    folds = pd.DataFrame(
        {
            "test": ["a", "a", "b", "b"],
            "validation": ["b", "b", "a", "a"],
            "seed": [0, 1, 0, 1],
            "chosen_epoch": [3, 4, 5, 6],
            **{
                f"{model}_{gene_set}": scores(0.3, 0.3, 0.3, 0.3)
                for model in ("probe", "ensemble", "best")
                for gene_set in ("all", "top_variance", "markers")
            },
            "hespotex_all": [0.4, 0.2, 0.6, 0.4],
            "hespotex_top_variance": [0.5, 0.5, 0.5, 0.5],
            "hespotex_markers": [0.1, 0.1, 0.1, 0.1],
            "n_markers": [17, 17, 17, 17],
        }
    )
    overall, lines = summary_tables(folds)
    assert overall["hespotex_all"]["mean"] == pytest.approx(0.4)
    assert overall["hespotex_all"]["sd"] == pytest.approx(np.std([0.5, 0.3], ddof=1))
    assert overall["lead_hespotex_top_variance"]["mean"] == pytest.approx(0.2)
    assert overall["lead_hespotex_markers"]["mean"] == pytest.approx(-0.2)
    assert overall["lead_best_all"]["mean"] == pytest.approx(0.0)
    assert lines[0] == "**all**" and "**markers** (≈ 17 genes)" in lines
    assert lines[4].startswith("| a / b | 3, 4 | 0.300 ± 0.141")
    assert sum(line.startswith("| **mean over folds** |") for line in lines) == 3


def test_the_probe_keeps_only_the_directions_its_training_spots_vary_in():
    """Dead or duplicated feature channels leave directions of no variance: they are not
    components (whitening them would blow a new slide's value there up a million-fold)."""
    rng = np.random.default_rng(6)
    varying = rng.normal(size=(300, 5))
    features = np.concatenate([varying, varying[:, :2], np.ones((300, 3))], axis=1)
    targets = varying[:, :2] @ rng.normal(size=(2, 3))
    probe = fit_probe([features[:200]], [targets[:200]], (features[200:], targets[200:]))
    assert probe.n_components == 5
    assert float(probe.component_variance.min()) > 1e-3
    assert np.all(pearson_per_gene(targets[200:], probe.predict(features[200:])) > 0.95)


def test_a_validation_section_of_constant_genes_keeps_the_first_strength():
    rng = np.random.default_rng(8)
    features = rng.normal(size=(100, 4))
    targets = features @ rng.normal(size=(4, 2))
    probe = fit_probe([features], [targets], (features[:10], np.ones((10, 2))), alphas=[1.0, 10.0])
    assert float(probe.alpha) == 1.0
