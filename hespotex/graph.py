"""Stage 4, graph: the spot graph as a sparse, undirected kNN edge list (scipy cKDTree).

Never an N × N matrix: a 200,000-spot slide has about a million edges, not 4 × 10¹⁰ cells.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

from hespotex import __version__
from hespotex.atomic import atomic_path
from hespotex.config import PipelineConfig
from hespotex.paths import SlidePaths
from hespotex.store import read_coords, write_graph_store

logger = logging.getLogger(__name__)


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


def run_graph(slide_id: str, config: PipelineConfig) -> np.ndarray:
    paths = SlidePaths(config.results, slide_id)
    coords = read_coords(paths.features)
    edge_index = knn_edges(coords, config.graph.k)
    attributes = {
        "slide_id": slide_id,
        "k": config.graph.k,
        "n_spots": len(coords),
        "undirected": True,
        "self_loops": False,
        "built_on": "coords of features.zarr, level-0 pixels",
        "hespotex_version": __version__,
    }
    with atomic_path(paths.graph) as tmp:
        write_graph_store(tmp, edge_index, attributes)
    logger.info(
        "spot graph: %d spots, %d directed edges, k = %d",
        len(coords),
        edge_index.shape[1],
        config.graph.k,
    )
    return edge_index
