"""Spatial blocks of a spot graph, so training memory is bounded by a block, not a section.

A section of 200,000 spots (Visium HD) does not fit one training step in memory: what
backpropagation keeps grows with spots × edges × hidden width. Its spots are cut into
spatial blocks of at most ``core_spots``; each block carries, besides its core, every spot
within the model's receptive field (``hops`` graph steps), so the core's outputs are exactly
those of the whole graph. Losses summed over the cores and divided by the section's size,
with gradients accumulated block by block, give the whole-graph gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SpotBlock:
    """``nodes`` index the section's spots, the ``n_core`` core spots first; ``edge_index``
    is the graph induced on ``nodes``, numbered by position in ``nodes``."""

    nodes: torch.Tensor
    n_core: int
    edge_index: torch.Tensor

    @property
    def core(self) -> torch.Tensor:
        return self.nodes[: self.n_core]

    def to(self, device: torch.device) -> SpotBlock:
        return SpotBlock(self.nodes.to(device), self.n_core, self.edge_index.to(device))


def spatial_cores(coords: np.ndarray, core_spots: int) -> list[np.ndarray]:
    """Spot indices cut into near-square spatial cells of at most ``core_spots`` each:
    strips of equal count along x, each cut along y, so blocks are compact (small halo)."""
    n_spots = len(coords)
    n_blocks = max(1, math.ceil(n_spots / core_spots))
    n_strips = math.ceil(math.sqrt(n_blocks))
    cells_per_strip = math.ceil(n_blocks / n_strips)
    cores = []
    for strip in np.array_split(np.argsort(coords[:, 0], kind="stable"), n_strips):
        by_y = strip[np.argsort(coords[strip, 1], kind="stable")]
        cores.extend(cell for cell in np.array_split(by_y, cells_per_strip) if len(cell))
    return cores


def with_receptive_field(core: np.ndarray, edge_index: np.ndarray, hops: int, n_spots: int):
    """The core's spots, then every spot whose value reaches the core within ``hops``
    message-passing steps (the sources of edges into spots already taken)."""
    source, target = edge_index
    taken = np.zeros(n_spots, dtype=bool)
    taken[core] = True
    for _ in range(hops):
        taken[source[taken[target]]] = True
    taken[core] = False
    return np.concatenate([core, np.flatnonzero(taken)])


def spot_blocks(
    coords: np.ndarray, edge_index: np.ndarray, hops: int, core_spots: int
) -> list[SpotBlock]:
    """The section as blocks whose cores partition its spots (a single block holding the
    whole graph when the section has at most ``core_spots`` spots)."""
    n_spots = len(coords)
    if n_spots <= core_spots:
        return [SpotBlock(torch.arange(n_spots), n_spots, torch.from_numpy(edge_index))]
    blocks = []
    position = np.full(n_spots, -1, dtype=np.int64)
    for core in spatial_cores(coords, core_spots):
        nodes = with_receptive_field(core, edge_index, hops, n_spots)
        position[nodes] = np.arange(len(nodes))
        inside = (position[edge_index[0]] >= 0) & (position[edge_index[1]] >= 0)
        local_edges = position[edge_index[:, inside]]
        position[nodes] = -1
        blocks.append(SpotBlock(torch.from_numpy(nodes), len(core), torch.from_numpy(local_edges)))
    return blocks
