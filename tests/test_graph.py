import numpy as np

from hespotex.network.spot_graph import knn_edges


def test_knn_edges_are_symmetric_without_self_loops_and_at_least_k():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 1000, size=(300, 2))
    edges = knn_edges(coords, 4)
    pairs = set(map(tuple, edges.T))
    assert all((b, a) in pairs for a, b in pairs)
    assert all(a != b for a, b in pairs)
    assert len(pairs) == edges.shape[1]
    degree = np.bincount(edges[0], minlength=300)
    assert degree.min() >= 4


def test_knn_on_a_square_grid_finds_the_four_orthogonal_neighbours():
    xs, ys = np.meshgrid(np.arange(5) * 100.0, np.arange(5) * 100.0)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    edges = knn_edges(coords, 4)
    centre = 12
    neighbours = sorted(edges[1][edges[0] == centre])
    assert neighbours == [7, 11, 13, 17]


def test_self_loops_and_tiny_inputs():
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    edges = knn_edges(coords, 8, self_loops=True)
    pairs = set(map(tuple, edges.T))
    assert {(0, 0), (1, 1), (2, 2)} <= pairs
    assert (0, 2) in pairs and (2, 0) in pairs
    assert knn_edges(np.zeros((1, 2)), 4).shape == (2, 0)
    assert knn_edges(np.zeros((1, 2)), 4, self_loops=True).tolist() == [[0], [0]]
