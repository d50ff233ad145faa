"""Training in spatial blocks: the cores partition the spots, and a step summed over blocks is
the step on the whole graph (same losses, same gradients, same latents and predictions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional

from hespotex.metrics import pearson_rows
from hespotex.network.blocks import spatial_cores, spot_blocks
from hespotex.network.spot_graph import knn_edges
from hespotex.network.streams import (
    ExpressionAutoencoder,
    ImageStream,
    ImageStreamShape,
    nucleus_scale,
)
from hespotex.training.data import SectionTensors, section_blocks
from hespotex.training.loops import (
    accumulate_autoencoder_gradients,
    accumulate_image_stream_gradients,
    autoencoder_latent,
    blockwise_rows,
    image_stream_prediction,
)

N_SPOTS = 400
N_GENES = 12


def hexagonal_spots(n_spots: int, seed: int = 0) -> np.ndarray:
    """A jittered hexagonal lattice, like a Visium capture area."""
    columns = int(np.ceil(np.sqrt(n_spots)))
    row, column = np.divmod(np.arange(n_spots), columns)
    rng = np.random.default_rng(seed)
    lattice = np.stack([column * 100.0 + (row % 2) * 50.0, row * 86.6], axis=1)
    return lattice + rng.normal(0, 3, lattice.shape)


def test_cores_partition_the_spots_in_compact_cells_of_bounded_size():
    coords = hexagonal_spots(1000)
    cores = spatial_cores(coords, 150)
    everything = np.concatenate(cores)
    assert len(everything) == 1000 and len(np.unique(everything)) == 1000
    assert max(len(core) for core in cores) <= 150
    assert len(cores) == 9
    # Compact: each core spans about a third of the section each way, not a thin strip.
    for core in cores:
        extent = np.ptp(coords[core], axis=0)
        assert extent.max() < 2.2 * extent.min()


def test_a_block_carries_its_receptive_field_and_no_edge_leaves_it():
    coords = hexagonal_spots(N_SPOTS)
    edges = knn_edges(coords, 4)
    for hops in (1, 2):
        for block in spot_blocks(coords, edges, hops, 60):
            nodes = block.nodes.numpy()
            inside = np.isin(edges, nodes).all(axis=0)
            reached = set(block.core.tolist())
            for _ in range(hops):
                reached |= set(edges[0][np.isin(edges[1], list(reached))].tolist())
            assert reached == set(nodes.tolist())
            assert block.edge_index.shape[1] == inside.sum()
            assert np.array_equal(
                np.sort(nodes[block.edge_index.numpy()], axis=1),
                np.sort(edges[:, inside], axis=1),
            )


def test_a_small_section_is_one_block_of_the_whole_graph():
    coords = hexagonal_spots(50)
    edges = knn_edges(coords, 4)
    (block,) = spot_blocks(coords, edges, 2, 50)
    assert block.n_core == 50 and torch.equal(block.nodes, torch.arange(50))
    assert torch.equal(block.edge_index, torch.from_numpy(edges))


def section_in_blocks(core_spots: int, nucleus_counts: bool = False) -> SectionTensors:
    decoder_blocks, gate_blocks = section_blocks(
        hexagonal_spots(N_SPOTS), 4, 8, core_spots, torch.device("cpu")
    )
    generator = torch.Generator().manual_seed(3)
    return SectionTensors(
        section_id="blocks",
        expression=torch.rand(N_SPOTS, N_GENES, generator=generator) * 5,
        features=torch.randn(N_SPOTS, 16, generator=generator),
        decoder_blocks=decoder_blocks,
        gate_blocks=gate_blocks,
        nucleus_scale=nucleus_scale(torch.randint(0, 25, (N_SPOTS,), generator=generator))
        if nucleus_counts
        else None,
        latent=torch.randn(N_SPOTS, 8, generator=generator),
    )


def assert_same_gradients(found: dict, expected: dict) -> None:
    """Equal up to float32 summation order (relative to each gradient's norm)."""
    assert found.keys() == expected.keys()
    for name, gradient in expected.items():
        assert (found[name] - gradient).norm() <= 1e-5 * gradient.norm(), name


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (the autoencoder's second layer has attention weights it
    never uses: STAGATE's layer without attention)."""
    return {
        name: parameter.grad.clone()
        for name, parameter in model.named_parameters()
        if parameter.grad is not None
    }


def test_autoencoder_step_in_blocks_is_the_whole_graph_step():
    torch.manual_seed(0)
    autoencoder = ExpressionAutoencoder(N_GENES, hidden_dim=32, latent_dim=8)
    results = {}
    for core_spots in (N_SPOTS, 45):
        section = section_in_blocks(core_spots)
        autoencoder.zero_grad()
        loss = accumulate_autoencoder_gradients(autoencoder, section)
        latent = blockwise_rows(
            section.gate_blocks, lambda block, s=section: autoencoder_latent(autoencoder, s, block)
        )
        results[core_spots] = (loss, gradients(autoencoder), latent, len(section.gate_blocks))
    whole, blocks = results[N_SPOTS], results[45]
    assert whole[3] == 1 and blocks[3] == 9
    section = section_in_blocks(N_SPOTS)
    edges = section.gate_blocks[0].edge_index
    expected_latent, reconstruction = autoencoder(section.expression, edges)
    assert whole[0] == pytest.approx(functional.mse_loss(reconstruction, section.expression).item())
    assert blocks[0] == pytest.approx(whole[0], rel=1e-5)
    assert_same_gradients(blocks[1], whole[1])
    assert torch.allclose(blocks[2], expected_latent, atol=1e-5)


@pytest.mark.parametrize("nucleus_counts", [False, True])
def test_image_stream_step_in_blocks_is_the_whole_graph_step(nucleus_counts):
    torch.manual_seed(0)
    model = ImageStream(ImageStreamShape(16, 8, N_GENES)).eval()
    results = {}
    for core_spots in (N_SPOTS, 45):
        section = section_in_blocks(core_spots, nucleus_counts)
        model.zero_grad()
        terms = torch.tensor(accumulate_image_stream_gradients(model, section))
        prediction = blockwise_rows(
            section.decoder_blocks,
            lambda block, s=section: image_stream_prediction(model, s, block),
        )
        results[core_spots] = (terms, gradients(model), prediction)
    whole, blocks = results[N_SPOTS], results[45]
    section = section_in_blocks(N_SPOTS, nucleus_counts)
    with torch.no_grad():
        expected, latent = model(
            section.features, section.decoder_blocks[0].edge_index, section.nucleus_scale
        )
    assert whole[0][0].item() == pytest.approx(
        1 - pearson_rows(section.latent, latent).mean().item(), rel=1e-5
    )
    assert whole[0][1].item() == pytest.approx(
        functional.mse_loss(expected, section.expression).item(), rel=1e-5
    )
    assert torch.allclose(blocks[0], whole[0], rtol=1e-5)
    assert_same_gradients(blocks[1], whole[1])
    assert torch.allclose(blocks[2], expected, atol=1e-4)
