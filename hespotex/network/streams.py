"""HESpotEx's two streams (DESIGN.md §1), on sparse edge lists.

Image stream (runs at inference): latent head, gene head, and a graph decoder of four
GraphSAGE-mean layers, each applied to the latent embeddings, whose outputs a 2-layer LSTM
reads as a sequence and averages ("jumping knowledge"); prediction = decoder + gene head.
Optionally (``training.feature_components``, ``training.linear_path``) it reads the features'
whitened principal components and adds a linear path from them to the genes, started at the
linear probe's solution, so the heads and the graph learn what the probe misses.

Expression stream (training only): a STAGATE-style graph attention autoencoder whose 64-d
bottleneck is the expression latent the image latent is aligned to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from hespotex.network.probe import LinearProbe

GRAPH_LAYERS = 4
HIDDEN = 1024
CHUNK_ACTIVATION_BYTES = 256 << 20


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


NUCLEUS_COUNT_RANGE = (1.0, 20.0)


def nucleus_scale(nucleus_counts: torch.Tensor) -> torch.Tensor:
    """The authors' cell-count factor from the nucleus counts of one section (or slide): each
    count clipped to 1..20, divided by the largest of them, plus 1 (common/dataset.py of their
    code). The factor lies in (1, 2]: crowded spots are raised at most twofold."""
    clipped = nucleus_counts.float().clamp(*NUCLEUS_COUNT_RANGE)
    return clipped / clipped.max() + 1


def scale_by_nuclei(genes: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Each spot's prediction × its ``nucleus_scale`` factor (none: unscaled)."""
    if scale is None:
        return genes
    return genes * scale.unsqueeze(1).to(genes.dtype)


@dataclass(frozen=True)
class ImageStreamShape:
    feature_dim: int
    latent_dim: int
    n_genes: int
    dropout: float = 0.0
    feature_dropout: float = 0.0
    # 0: the standardised features as they are; K: their first K whitened principal components.
    input_components: int = 0
    linear_path: bool = False

    @property
    def input_dim(self) -> int:
        return self.input_components or self.feature_dim


class ImageStream(nn.Module):
    # Every graph layer reads the latent embeddings (not the previous layer's output), so a
    # spot's prediction sees its direct neighbours only.
    RECEPTIVE_HOPS = 1

    def __init__(self, shape: ImageStreamShape):
        super().__init__()
        self.shape = shape
        self.feature_dropout = nn.Dropout(shape.feature_dropout)
        self.latent_head = _head(shape.input_dim, shape.latent_dim, shape.dropout)
        self.gene_head = _head(shape.latent_dim, shape.n_genes, shape.dropout)
        self.graph_layers = nn.ModuleList(
            SageMeanLayer(shape.latent_dim) for _ in range(GRAPH_LAYERS)
        )
        self.jumping_knowledge = nn.LSTM(
            shape.latent_dim, shape.n_genes, num_layers=2, batch_first=True
        )
        self.register_buffer("feature_mean", torch.zeros(shape.feature_dim))
        self.register_buffer("feature_std", torch.ones(shape.feature_dim))
        if shape.input_components:
            self.register_buffer(
                "feature_basis", torch.zeros(shape.feature_dim, shape.input_components)
            )
        # The probe's path, fixed at its solution (Adam would move every whitened component,
        # noise as fast as signal) and without dropout on its input, as the probe had none.
        self.linear_path = None
        if shape.linear_path:
            self.linear_path = nn.Linear(shape.input_dim, shape.n_genes).requires_grad_(False)

    def standardise_with(self, features: torch.Tensor) -> None:
        """Fix the per-dimension centring and scaling of encoder features to the training
        set's: frozen encoders (random ones above all) vary little between patches next to
        their common direction, which the heads would otherwise have to learn first."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp(min=1e-6))

    def start_from_mean(self, expression: torch.Tensor) -> None:
        """Start the gene head's output at the training mean of each gene: log1p CPM levels
        sit far from zero (≈ 5–12), and learning them from a zero bias at lr 1e-3 costs
        hundreds of steps before any pattern between spots is learnt."""
        with torch.no_grad():
            self.gene_head[-1].bias.copy_(expression.mean(dim=0))

    def start_from_probe(self, probe: LinearProbe) -> None:
        """Take the probe's standardisation and (whitened) components as the input, and start
        the linear path at the probe's solution with the gene head's last layer at zero: at
        the first step the stream predicts what the probe does, plus the graph decoder's
        small initial output (all of it times the nucleus factor when one is configured)."""
        with torch.no_grad():
            self.feature_mean.copy_(probe.feature_mean)
            self.feature_std.copy_(probe.feature_std)
            scale = probe.component_variance.sqrt()
            components = self.shape.input_components
            if components:
                if components > probe.n_components or (
                    self.linear_path is not None and components != probe.n_components
                ):
                    raise ValueError(
                        f"the probe has {probe.n_components} components, the stream reads "
                        f"{components}"
                    )
                self.feature_basis.copy_(probe.components[:, :components] / scale[:components])
                weight = probe.linear.weight * scale
            else:
                weight = probe.linear.weight @ probe.components.T
            if self.linear_path is not None:
                self.linear_path.weight.copy_(weight)
                self.linear_path.bias.copy_(probe.linear.bias)
                self.gene_head[-1].weight.zero_()
                self.gene_head[-1].bias.zero_()

    def inputs(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features - self.feature_mean) / self.feature_std
        if self.shape.input_components:
            return standardised @ self.feature_basis
        return standardised

    def latent(self, features: torch.Tensor) -> torch.Tensor:
        return self.latent_head(self.feature_dropout(self.inputs(features)))

    def graph_steps(self, latent: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """(N, 4, L): each graph layer applied to the latent embeddings."""
        return torch.stack([layer(latent, edge_index) for layer in self.graph_layers], dim=1)

    def genes_from(
        self, latent: torch.Tensor, steps: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        sequence, _ = self.jumping_knowledge(steps)
        genes = sequence.mean(dim=1) + self.gene_head(latent)
        if self.linear_path is not None:
            genes = genes + self.linear_path(self.inputs(features))
        return genes

    def forward(
        self,
        features: torch.Tensor,
        edge_index: torch.Tensor,
        nucleus_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.latent(features)
        genes = self.genes_from(latent, self.graph_steps(latent, edge_index), features)
        return scale_by_nuclei(genes, nucleus_scale), latent

    def spots_per_chunk(self, activation_bytes: int = CHUNK_ACTIVATION_BYTES) -> int:
        """Spots whose LSTM and gene-head activations (per spot, at float32: 4 steps × 2
        layers × the gates, cell and hidden state, 6 × G values; with 5,457 genes ≈ 1 MB)
        fit ``activation_bytes``."""
        per_spot = GRAPH_LAYERS * 2 * 6 * self.shape.n_genes * 4
        return max(16, activation_bytes // per_spot)

    @torch.inference_mode()
    def predict(
        self,
        features: torch.Tensor,
        edge_index: torch.Tensor,
        spot_chunk: int | None = None,
        nucleus_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Whole-slide prediction: the graph layers see every spot; the LSTM and gene head,
        whose activations are N × G, run a chunk of spots at a time (``spots_per_chunk``
        unless given)."""
        spot_chunk = spot_chunk or self.spots_per_chunk()
        latent = torch.cat([self.latent(part) for part in features.split(spot_chunk)])
        steps = self.graph_steps(latent, edge_index)
        genes = torch.cat(
            [
                self.genes_from(latent_part, steps_part, features_part).cpu()
                for latent_part, steps_part, features_part in zip(
                    latent.split(spot_chunk),
                    steps.split(spot_chunk),
                    features.split(spot_chunk),
                    strict=True,
                )
            ]
        )
        return scale_by_nuclei(genes, None if nucleus_scale is None else nucleus_scale.cpu())


AttentionScores = tuple[torch.Tensor, torch.Tensor]


class StagateAttentionConv(MessagePassing):
    """STAGATE's GAT layer (one head): ``h = x W``; with attention, each node sums its
    neighbours' ``h`` weighted by the softmax over neighbours of sigmoid(a_s·h_j + a_t·h_i).
    ``spread`` is the message passing alone, so a tied decoder can reuse the layer's scores
    on other values."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(aggr="add", node_dim=0)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.att_source = nn.Parameter(torch.empty(1, out_dim))
        self.att_target = nn.Parameter(torch.empty(1, out_dim))
        for parameter in (self.weight, self.att_source, self.att_target):
            nn.init.xavier_normal_(parameter, gain=1.414)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, attention: bool = True
    ) -> tuple[torch.Tensor, AttentionScores | None]:
        h = x @ self.weight
        if not attention:
            return h, None
        scores = ((h * self.att_source).sum(-1), (h * self.att_target).sum(-1))
        return self.spread(h, edge_index, scores), scores

    def spread(
        self, h: torch.Tensor, edge_index: torch.Tensor, scores: AttentionScores
    ) -> torch.Tensor:
        source_score, target_score = scores
        return self.propagate(edge_index, h=h, source_score=source_score, target_score=target_score)

    def message(
        self,
        h_j: torch.Tensor,
        source_score_j: torch.Tensor,
        target_score_i: torch.Tensor,
        index: torch.Tensor,
        size_i: int | None,
    ) -> torch.Tensor:
        alpha = softmax(torch.sigmoid(source_score_j + target_score_i), index, num_nodes=size_i)
        return h_j * alpha.unsqueeze(-1)


class ExpressionAutoencoder(nn.Module):
    """STAGATE's GATE: encoder GAT(G→512) + ELU, then (512→64) without attention. The
    decoder owns no parameters: its layers are the encoder's weights transposed (the same
    tensors, so both sides train them) and its first layer spreads with the encoder's
    attention scores."""

    # The encoder's attention layer reaches a spot's neighbours; the decoder spreads their
    # latents, which reached theirs.
    RECEPTIVE_HOPS = 2

    def __init__(self, n_genes: int, hidden_dim: int = 512, latent_dim: int = 64):
        super().__init__()
        self.conv1 = StagateAttentionConv(n_genes, hidden_dim)
        self.conv2 = StagateAttentionConv(hidden_dim, latent_dim)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, scores = self.conv1(x, edge_index)
        latent, _ = self.conv2(functional.elu(hidden), edge_index, attention=False)
        decoded = self.conv1.spread(latent @ self.conv2.weight.T, edge_index, scores)
        return latent, functional.elu(decoded) @ self.conv1.weight.T
