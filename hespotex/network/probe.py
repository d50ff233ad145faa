"""The linear probe every checkpoint carries beside HESpotEx: HEST-Benchmark's protocol.

Patch features standardised, projected onto their first 256 principal components (fitted on
the training sections' spots), then a ridge regression to the log-normalised genes. Its one
setting, the ridge strength, is chosen on the validation section that chooses HESpotEx's
epoch, never on a test section. The same standardisation and components are what the image
stream reads when ``training.feature_components`` is set, so both models start from one basis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from hespotex.config import PROBE_COMPONENTS
from hespotex.metrics import pearson_per_gene

logger = logging.getLogger(__name__)

# Up to 10⁷: on HER2ST with 1280-d features the best strength was once the grid's edge, where
# a ridge's predictions converge (benchmarks/RESULTS.md); the grid reaches past it.
RIDGE_ALPHAS = tuple(10.0**power for power in range(-1, 8))


class LinearProbe(nn.Module):
    """standardise → principal components → linear, as buffers and one linear layer, so a
    checkpoint stores it beside the image stream as plain tensors."""

    def __init__(self, feature_dim: int, n_components: int, n_genes: int):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.register_buffer("components", torch.zeros(feature_dim, n_components))
        # Variance of each component's scores on the training spots: what whitens them.
        self.register_buffer("component_variance", torch.ones(n_components))
        self.register_buffer("alpha", torch.zeros(()))
        self.linear = nn.Linear(n_components, n_genes)

    @property
    def n_components(self) -> int:
        return self.components.shape[1]

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.feature_mean) / self.feature_std) @ self.components

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.scores(features))

    @torch.inference_mode()
    def predict(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        return self(torch.as_tensor(features, dtype=torch.float32)).cpu().numpy()


ROWS_PER_CHUNK = 16_384
RANK_TOLERANCE = 1e-10


def standardised_chunks(
    inputs: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> Iterator[tuple[slice, np.ndarray]]:
    """Rows standardised in float64 a chunk at a time: a 200,000-spot section's features are
    never copied whole."""
    for start in range(0, len(inputs), ROWS_PER_CHUNK):
        rows = slice(start, start + ROWS_PER_CHUNK)
        yield rows, (inputs[rows].astype(np.float64) - mean) / std


def principal_components(
    standardised: np.ndarray | Iterable[tuple[slice, np.ndarray]], n_components: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top components (D × K) of centred rows (an array, or ``standardised_chunks``) and
    their scores' variances, from the D × D covariance, summed over chunks of rows."""
    chunks = [(slice(None), standardised)] if isinstance(standardised, np.ndarray) else standardised
    covariance, n_rows = None, 0
    for _, chunk in chunks:
        product = chunk.T @ chunk
        covariance = product if covariance is None else covariance + product
        n_rows += len(chunk)
    covariance /= max(n_rows - 1, 1)
    variances, vectors = np.linalg.eigh(covariance)
    # Only directions the training spots vary in: whitening a null direction would multiply
    # whatever a new slide puts there by a million.
    varying = variances > RANK_TOLERANCE * max(variances.max(), 0)
    order = np.argsort(variances)[::-1][: min(n_components, int(varying.sum()) or 1)]
    # Each component's sign fixed (largest loading positive) so a refit gives the same basis.
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return vectors * np.where(signs == 0, 1, signs), np.clip(variances[order], 1e-12, None)


def ridge_path(
    scores: np.ndarray, targets: np.ndarray, alphas: Sequence[float]
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(alpha, weight K × G, intercept G) for each strength, from one SVD of the centred
    scores (sklearn's Ridge with an intercept, every strength at the price of one)."""
    score_mean, target_mean = scores.mean(axis=0), targets.mean(axis=0)
    left, singular, right_t = np.linalg.svd(scores - score_mean, full_matrices=False)
    projected = left.T @ (targets - target_mean)
    path = []
    for alpha in alphas:
        weight = right_t.T @ ((singular / (singular**2 + alpha))[:, None] * projected)
        path.append((alpha, weight, target_mean - score_mean @ weight))
    return path


def calibrated(
    scores: np.ndarray, targets: np.ndarray, weight: np.ndarray, intercept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ridge solution with each gene's predictions rescaled to the least-squares fit of
    its training values. A strong penalty, which mean gene Pearson favours, shrinks every
    prediction towards the gene's mean: right in shape, wrong in scale. The rescaling keeps
    each gene's Pearson (the factor is positive: in-sample, a ridge fit's predictions never
    anticorrelate with its targets) and puts the values back in log1p CPM."""
    predicted = scores @ weight + intercept
    centred = predicted - predicted.mean(axis=0)
    spread = (centred**2).sum(axis=0)
    slope = np.divide(
        (centred * (targets - targets.mean(axis=0))).sum(axis=0),
        spread,
        out=np.ones_like(spread),
        where=spread > 0,
    )
    slope = np.clip(slope, 0, None)
    weight = weight * slope
    return weight, targets.mean(axis=0) - scores.mean(axis=0) @ weight


def fit_probe(
    features: Sequence[np.ndarray],
    expression: Sequence[np.ndarray],
    validation: tuple[np.ndarray, np.ndarray] | None,
    n_components: int = PROBE_COMPONENTS,
    alphas: Sequence[float] = RIDGE_ALPHAS,
) -> LinearProbe:
    """Fit on the training sections' spots; with a validation section, the strength with the
    best mean gene Pearson on it (else the middle of the grid), then ``calibrated``."""
    inputs = np.concatenate(features)
    targets = np.concatenate(expression).astype(np.float64)
    mean, std = inputs.mean(axis=0, dtype=np.float64), inputs.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    n_components = min(n_components, inputs.shape[1], max(len(inputs) - 1, 1))
    components, variances = principal_components(
        standardised_chunks(inputs, mean, std), n_components
    )
    n_components = components.shape[1]
    scores = np.empty((len(inputs), n_components))
    for rows, chunk in standardised_chunks(inputs, mean, std):
        scores[rows] = chunk @ components
    candidates = alphas if validation is not None else [alphas[len(alphas) // 2]]
    probe = LinearProbe(inputs.shape[1], n_components, targets.shape[1])
    as_tensor = torch.as_tensor
    probe.feature_mean.copy_(as_tensor(mean))
    probe.feature_std.copy_(as_tensor(std))
    probe.components.copy_(as_tensor(components))
    probe.component_variance.copy_(as_tensor(variances))
    path = ridge_path(scores, targets, candidates)
    best, best_score = path[0], -np.inf
    if validation is not None:
        validation_scores = ((validation[0] - mean) / std) @ components
        for alpha, weight, intercept in path:
            predicted = validation_scores @ weight + intercept
            correlations = pearson_per_gene(validation[1], predicted)
            # A validation section whose genes are all constant scores nothing: the first stays.
            score = np.nanmean(correlations) if np.isfinite(correlations).any() else -1.0
            if score > best_score:
                best_score, best = score, (alpha, weight, intercept)
    alpha, weight, intercept = best
    weight, intercept = calibrated(scores, targets, weight, intercept)
    with torch.no_grad():
        probe.linear.weight.copy_(as_tensor(weight.T))
        probe.linear.bias.copy_(as_tensor(intercept))
        probe.alpha.fill_(alpha)
    if validation is not None:
        logger.info(
            "probe: %d components, ridge alpha %g (validation mean Pearson %.4f)",
            n_components,
            alpha,
            best_score,
        )
    return probe.eval()
