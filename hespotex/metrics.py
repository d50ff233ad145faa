"""Scores of predicted against measured expression, per gene, vectorised over genes.

Pearson and MSE are taken across a section's spots for each gene. Pearson comes twice, side
by side: in numpy for scores (NaN-aware), in torch for the training loss and the validation
score (differentiable, on the training device); the tests hold them to the same values. SSIM
compares gene maps: spots are drawn on a grid of half the spot pitch (each grid cell takes its
nearest spot's value, cells farther than a pitch from any spot are background and not
scored), each map scaled to [0, 1], as spatial-expression papers compare maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    import torch


def pearson_per_gene(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(G,) Pearson correlation of each column over the rows where both are finite; NaN where
    either column is constant there."""
    valid = np.isfinite(measured) & np.isfinite(predicted)
    count = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        measured = np.where(valid, measured, 0.0)
        predicted = np.where(valid, predicted, 0.0)
        measured = np.where(valid, measured - measured.sum(axis=0) / count, 0.0)
        predicted = np.where(valid, predicted - predicted.sum(axis=0) / count, 0.0)
    denominator = np.sqrt((measured**2).sum(axis=0) * (predicted**2).sum(axis=0))
    numerator = (measured * predicted).sum(axis=0)
    return np.divide(
        numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0
    )


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (torch; rows
    are genes or spots as the caller lays them out)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def mse_per_gene(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return ((measured - predicted) ** 2).mean(axis=0)


def spot_pitch(centres: np.ndarray) -> float:
    """The median distance from a spot to its nearest neighbour."""
    distances, _ = cKDTree(centres).query(centres, k=2)
    return float(np.median(distances[:, 1]))


def map_raster(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a grid of half the spot pitch over the spots: each cell's nearest spot (H, W)
    and whether a spot lies within a pitch (the cells that are scored)."""
    pitch = spot_pitch(centres)
    cell = pitch / 2
    low = centres.min(axis=0) - pitch / 2
    width, height = np.ceil((centres.max(axis=0) + pitch / 2 - low) / cell).astype(int) + 1
    grid_x, grid_y = np.meshgrid(
        low[0] + cell * np.arange(width), low[1] + cell * np.arange(height)
    )
    distance, nearest = cKDTree(centres).query(np.stack([grid_x.ravel(), grid_y.ravel()], 1))
    return nearest.reshape(height, width), (distance <= pitch).reshape(height, width)


def _unit_range(values: np.ndarray) -> np.ndarray:
    """Each column scaled to [0, 1] (a constant column to 0)."""
    low = values.min(axis=0)
    span = values.max(axis=0) - low
    return np.divide(values - low, span, out=np.zeros_like(values, dtype=float), where=span > 0)


def ssim_per_gene(centres: np.ndarray, measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(G,) mean SSIM over the scored cells of each gene's measured and predicted maps."""
    from skimage.metrics import structural_similarity

    nearest, scored = map_raster(centres)
    window = min(7, *(side - (1 - side % 2) for side in nearest.shape))
    if window < 3:
        return np.full(measured.shape[1], np.nan)
    measured_maps = _unit_range(measured)[nearest] * scored[..., None]
    predicted_maps = _unit_range(predicted)[nearest] * scored[..., None]
    _, similarity = structural_similarity(
        measured_maps,
        predicted_maps,
        data_range=1.0,
        channel_axis=-1,
        win_size=window,
        full=True,
    )
    return similarity[scored].mean(axis=0)
