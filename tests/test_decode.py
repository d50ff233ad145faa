import json

import anndata as ad
import numpy as np
import pytest
from conftest import SVS, TEST_ENCODER

from hespotex.checkpoint import load_checkpoint, read_checkpoint_meta
from hespotex.config import parse_config
from hespotex.decode import run_decode
from hespotex.errors import CheckpointError, ConfigError
from hespotex.features import run_features
from hespotex.graph import run_graph
from hespotex.paths import SlidePaths
from hespotex.preflight import check_run
from hespotex.slide import open_slide
from hespotex.store import read_graph_store
from hespotex.tiling import run_tiles
from hespotex.tissue import run_tissue


@pytest.fixture(scope="module")
def decoded(tmp_path_factory, trained_checkpoint):
    results = tmp_path_factory.mktemp("results")
    config = parse_config(
        {
            "encoder": TEST_ENCODER,
            "results": str(results),
            "decode": {"checkpoint": str(trained_checkpoint), "spot_chunk": 13},
            "outputs": {"genes": ["PLANTED_HEMATOXYLIN"]},
        }
    )
    with open_slide(SVS, "svs") as slide:
        run_tissue(slide, "svs", config)
        run_tiles("svs", config)
        run_features(slide, "svs", config)
        run_graph("svs", config)
        run_decode(slide, "svs", config)
    return config, SlidePaths(results, "svs")


def test_top_patch_montage_shows_the_highest_and_lowest_spots(decoded):
    from PIL import Image

    from hespotex.montage import extreme_spots

    _, paths = decoded
    montage = paths.top_patch_montage("PLANTED_HEMATOXYLIN")
    with Image.open(montage) as image:
        width, height = image.size
    # Two rows of eight patches, about 1.6 inches (160 px) each.
    assert width >= 8 * 140 and height >= 2 * 140
    highest, lowest = extreme_spots(np.array([3.0, 1.0, 5.0, 2.0, 4.0]), 2)
    assert highest.tolist() == [2, 4] and lowest.tolist() == [1, 3]
    highest, lowest = extreme_spots(np.array([1.0, 2.0]), 8)
    assert highest.tolist() == [1, 0] and lowest.tolist() == [0, 1]


def test_qc_json_records_spots_area_resolution_identities_and_stage_timings(
    decoded, trained_checkpoint
):
    from hespotex.checksum import file_sha256
    from hespotex.paths import STAGES
    from hespotex.qc import record_stage

    config, paths = decoded
    for stage in STAGES:
        record_stage(config, "svs", stage, 1.5)
    qc = json.loads(paths.qc.read_text())
    assert qc["spots"] == len(paths.spots.read_text().splitlines()) - 1
    assert qc["tissue_area_mm2"] > 0.3
    assert qc["mpp"] == pytest.approx(0.499) and "openslide" in qc["mpp_source"]
    assert qc["encoder"]["architecture"] == "vit-tiny-32"
    assert qc["encoder"]["random_weights"] is True
    assert qc["checkpoint"]["sha256"] == file_sha256(trained_checkpoint)
    assert qc["checkpoint"]["trained_on"] == ["b4-left"]
    assert set(qc["timings"]) == set(STAGES)
    assert all(entry["seconds"] == 1.5 for entry in qc["timings"].values())
    assert all(entry["peak_rss_mb"] > 50 for entry in qc["timings"].values())
    assert qc["total_seconds"] == pytest.approx(1.5 * len(STAGES))


def test_heatmap_draws_square_cells_on_a_square_grid(decoded, tmp_path):
    from PIL import Image

    from hespotex.plots import write_heatmap

    _, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    for layout in ("hex", "square"):
        write_heatmap(tmp_path / f"{layout}.png", adata, "svs", "PLANTED_HEMATOXYLIN", layout)
    pixels = {
        layout: np.asarray(Image.open(tmp_path / f"{layout}.png").convert("RGB"))
        for layout in ("hex", "square")
    }
    assert pixels["hex"].shape == pixels["square"].shape
    assert not np.array_equal(pixels["hex"], pixels["square"])


def test_checkpoint_carries_genes_encoder_and_normalisation(trained_checkpoint):
    meta = read_checkpoint_meta(trained_checkpoint)
    assert "PLANTED_HEMATOXYLIN" in meta.genes and len(meta.genes) == 32
    assert meta.encoder.architecture == "vit-tiny-32"
    assert meta.encoder.weights_sha256 == "random-seed-0"
    assert meta.normalisation == "cpm_log1p" and meta.target_sum == 1e6
    assert meta.graph_k == 4 and meta.latent_dim == 64
    assert meta.trained_on == ["b4-left"]
    assert meta.training["validation_section"] == "b4-right"
    model, _ = load_checkpoint(trained_checkpoint)
    assert model.shape.n_genes == 32


def test_graph_store_is_symmetric_knn_on_the_feature_coordinates(decoded):
    _, paths = decoded
    edges, attributes = read_graph_store(paths.graph)
    assert attributes["k"] == 4 and attributes["undirected"] is True
    pairs = set(map(tuple, edges.T))
    assert all((b, a) in pairs for a, b in pairs)


def test_expression_h5ad_has_what_scanpy_and_squidpy_need(decoded):
    _, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    n_spots = len(paths.spots.read_text().splitlines()) - 1
    assert adata.shape == (n_spots, 32)
    assert {"x_px", "y_px", "x_um", "y_um"} <= set(adata.obs.columns)
    assert np.allclose(adata.obsm["spatial"], adata.obs[["x_px", "y_px"]].to_numpy())
    assert np.allclose(adata.obs.x_um, adata.obs.x_px * 0.499, rtol=1e-3)
    library = adata.uns["spatial"]["svs"]
    assert library["images"]["hires"].ndim == 3
    scale = library["scalefactors"]["tissue_hires_scalef"]
    assert scale == pytest.approx(0.499 / 8.0, rel=0.02)
    assert library["scalefactors"]["spot_diameter_fullres"] == pytest.approx(100 / 0.499)
    assert adata.uns["hespotex"]["encoder_random_weights"]
    assert np.isfinite(adata.X).all() and adata.X.std(axis=0).max() > 0
    assert (paths.heatmaps / "PLANTED_HEMATOXYLIN.png").is_file()


def test_qupath_geojson_has_spots_at_true_size_with_expression_and_the_tissue(decoded):
    config, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    collection = json.loads(paths.qupath.read_text())
    assert collection["type"] == "FeatureCollection"
    detections = [f for f in collection["features"] if f["properties"]["objectType"] == "detection"]
    annotations = [
        f for f in collection["features"] if f["properties"]["objectType"] == "annotation"
    ]
    assert [f["id"] for f in detections] == list(adata.obs_names)
    spacing_px = config.grid.spacing_um / float(adata.uns["hespotex"]["mpp"])
    for feature, centre, value in zip(
        detections, adata.obsm["spatial"], adata[:, "PLANTED_HEMATOXYLIN"].X.ravel(), strict=True
    ):
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon" and len(ring) == 7
        assert np.array_equal(ring[0], ring[-1])
        assert np.allclose(ring[:-1].mean(axis=0), centre, atol=0.05)
        x, y = ring[:, 0], ring[:, 1]
        area = abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2
        # A hexagon of the hexagonal lattice: area √3/2 · spacing², as the lattice's cell.
        assert area == pytest.approx(np.sqrt(3) / 2 * spacing_px**2, rel=1e-3)
        assert feature["properties"]["measurements"] == {
            "PLANTED_HEMATOXYLIN": pytest.approx(float(value), abs=1e-4)
        }
    assert len(annotations) == 1
    tissue = annotations[0]
    assert tissue["properties"]["classification"]["name"] == "Tissue"
    outline = np.concatenate(
        [np.array(polygon[0]) for polygon in tissue["geometry"]["coordinates"]]
    )
    width, height = read_tissue_size(paths)
    assert outline.min() >= 0
    assert outline[:, 0].max() <= width and outline[:, 1].max() <= height
    assert np.all(adata.obsm["spatial"].min(axis=0) >= outline.min(axis=0) - spacing_px)


def test_tissue_outlines_are_outer_rings_only_even_around_a_hole():
    from hespotex.qupath import tissue_outlines

    mask = np.zeros((40, 60), dtype=bool)
    mask[5:35, 5:30] = True
    mask[15:25, 12:22] = False  # a hole
    mask[10:20, 40:55] = True  # a second region
    rings = tissue_outlines(mask, 4.0, (240, 160))
    assert len(rings) == 2
    spans = sorted((np.ptp(np.array(ring)[:, 0]), np.ptp(np.array(ring)[:, 1])) for ring in rings)
    assert spans[0] == pytest.approx((14 * 4, 9 * 4), abs=4)
    assert spans[1] == pytest.approx((24 * 4, 29 * 4), abs=4)


def read_tissue_size(paths: SlidePaths) -> tuple[int, int]:
    record = json.loads(paths.tissue_record.read_text())
    return record["width_px"], record["height_px"]


def test_scanpy_draws_the_spatial_plot_unchanged(decoded, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    _, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    sc.pl.spatial(adata, color="PLANTED_HEMATOXYLIN", library_id="svs", show=False)
    import matplotlib.pyplot as plt

    plt.savefig(tmp_path / "spatial.png")
    assert (tmp_path / "spatial.png").stat().st_size > 10_000


def test_features_from_another_encoder_are_refused(decoded, trained_checkpoint):
    config, paths = decoded
    attributes_file = paths.features / "zarr.json"
    metadata = json.loads(attributes_file.read_text())
    original = attributes_file.read_text()
    metadata["attributes"]["encoder_weights_sha256"] = "0" * 64
    attributes_file.write_text(json.dumps(metadata))
    try:
        with pytest.raises(CheckpointError) as error, open_slide(SVS, "svs") as slide:
            run_decode(slide, "svs", config)
        assert str(trained_checkpoint) in str(error.value)
        assert "use the encoder the checkpoint was trained with" in str(error.value)
    finally:
        attributes_file.write_text(original)


def test_preflight_refuses_a_mismatched_encoder_unknown_gene_and_corrupt_checkpoint(
    tmp_path, trained_checkpoint
):
    sheet = tmp_path / "s.tsv"
    sheet.write_text(f"slide_id\tpath\nsvs\t{SVS}\n")
    base = {"samples": str(sheet), "decode": {"checkpoint": str(trained_checkpoint)}}
    assert list(check_run(parse_config({**base, "encoder": TEST_ENCODER}))) == ["svs"]
    other = {**TEST_ENCODER, "seed": 1}
    with pytest.raises(CheckpointError, match="random-seed-1"):
        check_run(parse_config({**base, "encoder": other}))
    with pytest.raises(ConfigError, match="NOT_A_GENE"):
        check_run(
            parse_config({**base, "encoder": TEST_ENCODER, "outputs": {"genes": ["NOT_A_GENE"]}})
        )
    with pytest.raises(ConfigError, match="graph.k"):
        check_run(parse_config({**base, "encoder": TEST_ENCODER, "graph": {"k": 6}}))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        check_run(
            parse_config({**base, "encoder": TEST_ENCODER, "decode": {"checkpoint": str(corrupt)}})
        )


def test_preflight_wants_a_python_with_spatialdata_when_the_export_is_on(
    tmp_path, trained_checkpoint
):
    import sys

    sheet = tmp_path / "s.tsv"
    sheet.write_text(f"slide_id\tpath\nsvs\t{SVS}\n")
    base = {
        "samples": str(sheet),
        "encoder": TEST_ENCODER,
        "decode": {"checkpoint": str(trained_checkpoint)},
    }
    with pytest.raises(ConfigError, match="spatialdata_python is not set.*make viewers"):
        check_run(parse_config({**base, "outputs": {"spatialdata": True}}))
    without = {"spatialdata": True, "spatialdata_python": sys.executable}
    with pytest.raises(ConfigError, match="has no spatialdata"):
        check_run(parse_config({**base, "outputs": without}))
    missing = {"spatialdata": True, "spatialdata_python": str(tmp_path / "no-python")}
    with pytest.raises(ConfigError, match="no-python cannot run"):
        check_run(parse_config({**base, "outputs": missing}))


def test_a_checkpoint_scaled_by_nucleus_counts_decodes_with_the_features_stage_counts(
    tmp_path, decoded, trained_checkpoint
):
    """The features stage counts nuclei when the checkpoint asks for it; decode multiplies by
    the counts clipped to 1..20, and refuses a store written for a checkpoint without them."""
    from hespotex.checkpoint import save_checkpoint
    from hespotex.errors import InputDataError
    from hespotex.store import read_feature_store

    model, meta = load_checkpoint(trained_checkpoint)
    scaled = tmp_path / "scaled.safetensors"
    save_checkpoint(scaled, model, meta.model_copy(update={"nucleus_counter": "hematoxylin"}))
    _, unscaled_paths = decoded
    settings = {"encoder": TEST_ENCODER, "results": str(tmp_path / "results")}
    unscaled_config = parse_config({**settings, "decode": {"checkpoint": str(trained_checkpoint)}})
    config = parse_config({**settings, "decode": {"checkpoint": str(scaled)}})
    paths = SlidePaths(config.results, "svs")
    with open_slide(SVS, "svs") as slide:
        run_tissue(slide, "svs", config)
        run_tiles("svs", config)
        run_features(slide, "svs", unscaled_config)
        run_graph("svs", config)
        assert read_feature_store(paths.features).nucleus_counts is None
        with pytest.raises(InputDataError, match="features.zarr.*--forcerun features"):
            run_decode(slide, "svs", config)
        run_features(slide, "svs", config)
        run_decode(slide, "svs", config)
    store = read_feature_store(paths.features)
    assert store.attributes["nucleus_counter"] == "hematoxylin"
    counts = store.nucleus_counts
    assert counts.shape == (len(store.features),) and counts.max() > 1
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    unscaled = ad.read_h5ad(unscaled_paths.expression).X
    predicted = ad.read_h5ad(paths.expression).X
    assert np.allclose(predicted, unscaled * np.clip(counts, 1, 20)[:, None], rtol=1e-4, atol=1e-4)
