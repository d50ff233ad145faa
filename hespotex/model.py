"""HESpotEx's two streams (DESIGN.md §1), on sparse edge lists.

Image stream (runs at inference): latent head, gene head, and a graph decoder of four
GraphSAGE-mean layers, each applied to the latent embeddings, whose outputs a 2-layer LSTM
reads as a sequence and averages ("jumping knowledge"); prediction = decoder + gene head.

Expression stream (training only): a STAGATE-style graph attention autoencoder whose 64-d
bottleneck is the expression latent the image latent is aligned to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

GRAPH_LAYERS = 4
HIDDEN = 1024


def neighbour_mean(x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Mean of each node's neighbours' rows (zero for a node without neighbours)."""
    source, target = edge_index
    total = torch.zeros_like(x).index_add_(0, target, x[source])
    count = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    count.index_add_(0, target, torch.ones_like(target, dtype=x.dtype))
    return total / count.clamp(min=1).unsqueeze(1)


class SageMeanLayer(nn.Module):
    """concat(self, mean of neighbours) → Linear(2L → L, no bias) → ReLU → L2-normalise."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim, bias=False)
        nn.init.xavier_uniform_(self.linear.weight)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        combined = torch.cat([x, neighbour_mean(x, edge_index)], dim=1)
        return functional.normalize(functional.relu(self.linear(combined)), dim=1)


def _head(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, HIDDEN),
        nn.ReLU(),
        nn.LayerNorm(HIDDEN),
        nn.Dropout(dropout),
        nn.Linear(HIDDEN, out_dim),
    )


@dataclass(frozen=True)
class ImageStreamShape:
    feature_dim: int
    latent_dim: int
    n_genes: int
    dropout: float = 0.0


class ImageStream(nn.Module):
    def __init__(self, shape: ImageStreamShape):
        super().__init__()
        self.shape = shape
        self.latent_head = _head(shape.feature_dim, shape.latent_dim, shape.dropout)
        self.gene_head = _head(shape.latent_dim, shape.n_genes, shape.dropout)
        self.graph_layers = nn.ModuleList(
            SageMeanLayer(shape.latent_dim) for _ in range(GRAPH_LAYERS)
        )
        self.jumping_knowledge = nn.LSTM(
            shape.latent_dim, shape.n_genes, num_layers=2, batch_first=True
        )
        self.register_buffer("feature_mean", torch.zeros(shape.feature_dim))
        self.register_buffer("feature_std", torch.ones(shape.feature_dim))

    def standardise_with(self, features: torch.Tensor) -> None:
        """Fix the per-dimension centring and scaling of encoder features to the training
        set's: frozen encoders (random ones above all) vary little between patches next to
        their common direction, which the heads would otherwise have to learn first."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp(min=1e-6))

    def latent(self, features: torch.Tensor) -> torch.Tensor:
        return self.latent_head((features - self.feature_mean) / self.feature_std)

    def graph_steps(self, latent: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """(N, 4, L): each graph layer applied to the latent embeddings."""
        return torch.stack([layer(latent, edge_index) for layer in self.graph_layers], dim=1)

    def genes_from(self, latent: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.jumping_knowledge(steps)
        return sequence.mean(dim=1) + self.gene_head(latent)

    def forward(
        self, features: torch.Tensor, edge_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.latent(features)
        return self.genes_from(latent, self.graph_steps(latent, edge_index)), latent

    @torch.inference_mode()
    def predict(
        self, features: torch.Tensor, edge_index: torch.Tensor, spot_chunk: int
    ) -> torch.Tensor:
        """Whole-slide prediction: the graph layers see every spot; the LSTM and gene head,
        whose activations are N × G, run a chunk of spots at a time."""
        latent = torch.cat([self.latent(part) for part in features.split(spot_chunk)])
        steps = self.graph_steps(latent, edge_index)
        return torch.cat(
            [
                self.genes_from(latent_part, steps_part).cpu()
                for latent_part, steps_part in zip(
                    latent.split(spot_chunk), steps.split(spot_chunk), strict=True
                )
            ]
        )


class GraphAttentionLayer(nn.Module):
    """STAGATE's layer: x W, then (optionally) attention over neighbours with a sigmoid on
    the scores before the softmax. Without attention it is the linear map alone."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.att_source = nn.Parameter(torch.empty(1, out_dim))
        self.att_target = nn.Parameter(torch.empty(1, out_dim))
        for parameter in (self.weight, self.att_source, self.att_target):
            nn.init.xavier_normal_(parameter, gain=1.414)

    def attention(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        from torch_geometric.utils import softmax

        source, target = edge_index
        scores = (h * self.att_source).sum(-1)[source] + (h * self.att_target).sum(-1)[target]
        return softmax(torch.sigmoid(scores), target, num_nodes=h.shape[0])

    @staticmethod
    def propagate(h: torch.Tensor, edge_index: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        source, target = edge_index
        return torch.zeros_like(h).index_add_(0, target, h[source] * alpha.unsqueeze(1))


class ExpressionAutoencoder(nn.Module):
    """GATE: encoder GAT(G→512) + ELU, linear (512→64); decoder tied to the transposed
    encoder weights, its first layer reusing the encoder's attention."""

    def __init__(self, n_genes: int, hidden_dim: int = 512, latent_dim: int = 64):
        super().__init__()
        self.conv1 = GraphAttentionLayer(n_genes, hidden_dim)
        self.conv2 = GraphAttentionLayer(hidden_dim, latent_dim)

    def encode(
        self, x: torch.Tensor, edge_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = x @ self.conv1.weight
        alpha = self.conv1.attention(h, edge_index)
        hidden = functional.elu(self.conv1.propagate(h, edge_index, alpha))
        return hidden @ self.conv2.weight, alpha

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        latent, alpha = self.encode(x, edge_index)
        decoded = functional.elu(
            self.conv1.propagate(latent @ self.conv2.weight.T, edge_index, alpha)
        )
        return latent, decoded @ self.conv1.weight.T


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
