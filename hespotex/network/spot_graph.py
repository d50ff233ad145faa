"""The spot graph: each spot linked to its k nearest spots, as a sparse undirected edge list.

Built with scipy's cKDTree, never as an N × N matrix: a 200,000-spot slide has about a million
edges, not 4 × 10¹⁰ cells. The decoder, the expression autoencoder and the spatial blocks of
training all run over it.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def knn_edges(coords: np.ndarray, k: int, self_loops: bool = False) -> np.ndarray:
    """(2, E) int64 edges linking each point to its k nearest others, made undirected
    (both directions present, no duplicates), sorted by (source, target)."""
    n_points = len(coords)
    if n_points < 2:
        pairs = np.empty((0, 2), dtype=np.int64)
    else:
        neighbours = min(k, n_points - 1)
        _, index = cKDTree(coords).query(coords, k=neighbours + 1)
        source = np.repeat(np.arange(n_points), neighbours)
        target = index[:, 1:].reshape(-1)
        pairs = np.stack([source, target], axis=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        pairs = np.concatenate([pairs, pairs[:, ::-1]], axis=0)
    if self_loops:
        loops = np.repeat(np.arange(n_points)[:, None], 2, axis=1)
        pairs = np.concatenate([pairs, loops], axis=0)
    pairs = np.unique(pairs.astype(np.int64), axis=0)
    return np.ascontiguousarray(pairs.T)
