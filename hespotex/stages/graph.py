"""Stage 4, graph: the spot graph as a sparse, undirected kNN edge list (scipy cKDTree).

Never an N × N matrix: a 200,000-spot slide has about a million edges, not 4 × 10¹⁰ cells.
"""

from __future__ import annotations

import logging

import numpy as np

from hespotex import __version__
from hespotex.config import PipelineConfig
from hespotex.io.atomic import atomic_path
from hespotex.io.stores import read_coords, write_graph_store
from hespotex.network.spot_graph import knn_edges
from hespotex.paths import SlidePaths

logger = logging.getLogger(__name__)


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
