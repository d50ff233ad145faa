import pytest
import torch

from hespotex.network.spot_graph import knn_edges
from hespotex.network.streams import (
    ExpressionAutoencoder,
    ImageStream,
    ImageStreamShape,
    StagateAttentionConv,
    neighbour_mean,
    nucleus_scale,
    scale_by_nuclei,
)


def _graph(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(n, 2, generator=generator).numpy() * 100
    return torch.from_numpy(knn_edges(coords, 4)), generator


def test_neighbour_mean_averages_incoming_neighbours():
    x = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    edges = torch.tensor([[1, 2, 0, 3], [0, 0, 1, 2]])
    result = neighbour_mean(x, edges)
    assert torch.allclose(result, torch.tensor([[4.0], [1.0], [7.0], [0.0]]))


def test_lstm_reads_four_graph_steps_and_chunked_prediction_equals_forward():
    edges, generator = _graph(120)
    model = ImageStream(ImageStreamShape(feature_dim=32, latent_dim=16, n_genes=10)).eval()
    features = torch.randn(120, 32, generator=generator)
    with torch.no_grad():
        latent = model.latent(features)
        steps = model.graph_steps(latent, edges)
        full, _ = model(features, edges)
    assert steps.shape == (120, 4, 16)
    assert torch.allclose(steps.norm(dim=2)[steps.norm(dim=2) > 0], torch.tensor(1.0), atol=1e-5)
    assert model.jumping_knowledge.num_layers == 2
    assert model.jumping_knowledge.hidden_size == 10
    chunked = model.predict(features, edges, spot_chunk=7)
    assert chunked.shape == (120, 10)
    assert torch.allclose(chunked, full, atol=1e-5)


def test_prediction_depends_on_neighbours_through_the_graph():
    edges, generator = _graph(50)
    model = ImageStream(ImageStreamShape(feature_dim=8, latent_dim=8, n_genes=3)).eval()
    features = torch.randn(50, 8, generator=generator)
    target = int(edges[1][0])
    neighbour = int(edges[0][0])
    changed = features.clone()
    changed[neighbour] += 5
    before = model.predict(features, edges, 64)[target]
    after = model.predict(changed, edges, 64)[target]
    assert not torch.allclose(before, after)


def test_autoencoder_decoder_is_tied_and_reconstruction_falls():
    torch.manual_seed(0)
    edges, generator = _graph(80)
    loops = torch.arange(80).repeat(2, 1)
    edges = torch.cat([edges, loops], dim=1)
    x = torch.randn(80, 20, generator=generator).abs()
    model = ExpressionAutoencoder(20, hidden_dim=32, latent_dim=8)
    assert sum(p.numel() for p in model.parameters()) == 20 * 32 + 2 * 32 + 32 * 8 + 2 * 8
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        optimiser.zero_grad()
        latent, reconstruction = model(x, edges)
        loss = torch.nn.functional.mse_loss(reconstruction, x)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert latent.shape == (80, 8)
    assert losses[-1] < 0.5 * losses[0]


def test_gat_layer_is_message_passing_with_sigmoid_scores_softmaxed_per_target():
    from torch_geometric.nn import MessagePassing

    torch.manual_seed(1)
    layer = StagateAttentionConv(3, 2)
    assert isinstance(layer, MessagePassing)
    x = torch.randn(3, 3)
    edges = torch.tensor([[0, 1, 2, 1, 0], [0, 0, 0, 1, 1]])
    out, (source_score, target_score) = layer(x, edges)
    h = x @ layer.weight
    raw = torch.sigmoid(source_score[[0, 1, 2]] + target_score[0])
    weights = torch.softmax(raw, dim=0)
    assert torch.allclose(out[0], (weights.unsqueeze(1) * h[[0, 1, 2]]).sum(0), atol=1e-6)
    assert torch.allclose(out[2], torch.zeros(2))


def test_autoencoder_decoder_uses_the_encoder_weights_transposed():
    torch.manual_seed(2)
    edges, generator = _graph(30)
    x = torch.randn(30, 6, generator=generator)
    model = ExpressionAutoencoder(6, hidden_dim=5, latent_dim=3)
    assert [name for name, _ in model.named_parameters()] == [
        "conv1.weight", "conv1.att_source", "conv1.att_target",
        "conv2.weight", "conv2.att_source", "conv2.att_target",
    ]  # fmt: skip
    latent, reconstruction = model(x, edges)
    _, scores = model.conv1(x, edges)
    decoded = model.conv1.spread(latent @ model.conv2.weight.T, edges, scores)
    expected = torch.nn.functional.elu(decoded) @ model.conv1.weight.T
    assert torch.allclose(reconstruction, expected, atol=1e-6)
    reconstruction.sum().backward()
    encoder_only = model.conv1.weight.grad.clone()
    model.zero_grad()
    model(x, edges)[0].sum().backward()
    assert not torch.allclose(encoder_only, model.conv1.weight.grad)


def test_nucleus_counts_scale_predictions_as_the_authors_do():
    """clip(count, 1, 20) / its largest + 1, over the section (the authors' dataset code)."""
    genes = torch.ones(4, 2)
    scale = nucleus_scale(torch.tensor([0.0, 5.0, 20.0, 80.0]))
    assert scale_by_nuclei(genes, scale)[:, 0].tolist() == pytest.approx([1.05, 1.25, 2.0, 2.0])
    assert nucleus_scale(torch.tensor([2.0, 4.0])).tolist() == [1.5, 2.0]
    assert scale_by_nuclei(genes, None) is genes
