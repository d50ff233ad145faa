"""The outputs stage and each of its writers: heatmaps, top-patch montages, QuPath GeoJSON,
stage records and qc.json, on a real slide decoded by the trained checkpoint."""

import json
import time

import anndata as ad
import numpy as np
import pytest
from conftest import SVS

from hespotex.errors import ConfigError
from hespotex.io.records import read_spots
from hespotex.io.stage_records import stage_record
from hespotex.outputs.qc import write_slide_qc
from hespotex.paths import SlidePaths
from hespotex.stage_table import STAGES


def test_the_outputs_stage_draws_every_configured_gene(decoded):
    _, paths = decoded
    assert [path.name for path in paths.heatmaps.iterdir()] == ["PLANTED_HEMATOXYLIN.png"]
    assert [path.name for path in paths.top_patches.iterdir()] == ["PLANTED_HEMATOXYLIN.png"]
    assert paths.qupath.is_file()


def test_a_gene_the_map_lacks_is_refused_before_anything_is_drawn(decoded, tmp_path):
    from hespotex.outputs.per_slide import gene_predictions

    _, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    with pytest.raises(ConfigError, match=r"NOT_A_GENE not predicted in .*expression\.h5ad"):
        gene_predictions(adata, ["PLANTED_HEMATOXYLIN", "NOT_A_GENE"], paths.expression)
    values = gene_predictions(adata, ["PLANTED_EOSIN"], paths.expression)["PLANTED_EOSIN"]
    assert np.array_equal(values, adata[:, "PLANTED_EOSIN"].X.ravel())


def test_montages_are_written_alone_from_any_predictions(decoded, tmp_path):
    from PIL import Image

    from hespotex.io.slide import open_slide
    from hespotex.outputs.montages import write_top_patch_montages

    config, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    centres = np.asarray(adata.obsm["spatial"])
    by_x = {"ALONG_X": centres[:, 0]}
    with open_slide(SVS, "svs") as slide:
        write_top_patch_montages(tmp_path / "three", slide, centres, by_x, 3, config.features)
        write_top_patch_montages(tmp_path / "none", slide, centres, by_x, 0, config.features)
    with Image.open(tmp_path / "three" / "ALONG_X.png") as image:
        assert image.width >= 3 * 140 and image.height >= 2 * 140
    assert list((tmp_path / "none").iterdir()) == []


def test_top_patch_montage_shows_the_highest_and_lowest_spots(decoded):
    from PIL import Image

    from hespotex.outputs.montages import extreme_spots

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


def test_qc_json_records_spots_area_resolution_identities_and_stage_records(
    decoded, trained_checkpoint
):
    from hespotex.io.checksum import file_sha256

    config, paths = decoded
    for stage in STAGES:
        with stage_record(paths, stage):
            time.sleep(0.01)
    write_slide_qc(config, "svs")
    qc = json.loads(paths.qc.read_text())
    assert qc["spots"] == len(paths.spots.read_text().splitlines()) - 1
    assert qc["tissue_area_mm2"] > 0.3
    assert qc["mpp"] == pytest.approx(0.499) and "openslide" in qc["mpp_source"]
    assert qc["encoder"]["architecture"] == "vit-tiny-32"
    assert qc["encoder"]["random_weights"] is True
    assert qc["checkpoint"]["sha256"] == file_sha256(trained_checkpoint)
    assert qc["checkpoint"]["trained_on"] == ["b4-left"]
    assert qc["stain_check"]["verdict"] == "H&E" and qc["stain_check"]["dab_fraction"] < 0.01
    assert qc["stain_normalisation"]["method"] == "none"
    assert qc["stain_normalisation"]["description"] == "no stain normalisation"
    assert qc["stain_normalisation"]["measured_on_slide"] is None
    assert qc["checkpoint"]["genes_kept"] == qc["checkpoint"]["genes"] == 32
    assert -1 < qc["checkpoint"]["gene_scores"]["validation_pearson"]["median"] < 1
    assert set(qc["timings"]) == set(STAGES)
    assert all(entry["seconds"] >= 0.01 for entry in qc["timings"].values())
    assert all(entry["peak_rss_mb"] > 50 for entry in qc["timings"].values())
    seconds = [entry["seconds"] for entry in qc["timings"].values()]
    assert qc["total_seconds"] == pytest.approx(sum(seconds), abs=1e-3)


def test_heatmap_draws_square_cells_on_a_square_grid(decoded, tmp_path):
    from PIL import Image

    from hespotex.outputs.heatmaps import write_heatmap

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


def test_heatmap_titles_say_how_far_each_gene_is_trusted():
    import pandas as pd

    from hespotex.outputs.heatmaps import gene_trust

    var = pd.DataFrame(
        {"validation_pearson": [0.456, np.nan], "cv_pearson": [0.312, np.nan]},
        index=["ERBB2", "NOISE_01"],
    )
    assert gene_trust(var, "ERBB2") == " (cv r = 0.31, validation r = 0.46)"
    assert gene_trust(var, "NOISE_01") == ""
    assert gene_trust(pd.DataFrame(index=["ERBB2"]), "ERBB2") == ""
    var["served_model"] = ["probe", "hespotex"]
    var["served_pearson"] = [0.312, np.nan]
    assert gene_trust(var, "ERBB2") == " (probe, r = 0.31)"
    assert gene_trust(var, "NOISE_01") == ""


def test_qupath_geojson_has_spots_at_true_size_with_expression_and_the_tissue(decoded):
    config, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    collection = json.loads(paths.qupath.read_text())
    assert collection["type"] == "FeatureCollection"
    detections = [f for f in collection["features"] if f["properties"]["objectType"] == "detection"]
    annotations = [
        f for f in collection["features"] if f["properties"]["objectType"] == "annotation"
    ]
    kept, dropped = detections[: adata.n_obs], detections[adata.n_obs :]
    assert [f["id"] for f in kept] == list(adata.obs_names)
    dropped_spots = read_spots(paths.dropped_spots)
    assert [f["id"] for f in dropped] == list(dropped_spots["spot_id"])
    for feature, reasons in zip(dropped, dropped_spots["qc_reasons"], strict=True):
        assert feature["properties"]["classification"]["name"] == f"QC dropped: {reasons}"
        assert feature["properties"]["measurements"].keys() >= {"tissue_fraction", "ink_fraction"}
    spacing_px = config.grid.spacing_um / float(adata.uns["hespotex"]["mpp"])
    for feature, centre, value, (_, spot) in zip(
        kept,
        adata.obsm["spatial"],
        adata[:, "PLANTED_HEMATOXYLIN"].X.ravel(),
        adata.obs.iterrows(),
        strict=True,
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
            "PLANTED_HEMATOXYLIN": pytest.approx(float(value), abs=1e-4),
            "tissue_fraction": pytest.approx(spot["tissue_fraction"], abs=1e-4),
            "ink_fraction": pytest.approx(spot["ink_fraction"], abs=1e-4),
            "fold_fraction": pytest.approx(spot["fold_fraction"], abs=1e-4),
            "blur_score": pytest.approx(spot["blur_score"], abs=1e-4),
        }
        flagged = feature["properties"].get("classification", {}).get("name")
        assert flagged == (f"QC flagged: {spot['qc_reasons']}" if spot["qc"] == "flagged" else None)
    tissue = next(f for f in annotations if f["id"] == "tissue")
    assert tissue["properties"]["classification"]["name"] == "Tissue"
    outline = np.concatenate(
        [np.array(polygon[0]) for polygon in tissue["geometry"]["coordinates"]]
    )
    width, height = read_tissue_size(paths)
    assert outline.min() >= 0
    assert outline[:, 0].max() <= width and outline[:, 1].max() <= height
    assert np.all(adata.obsm["spatial"].min(axis=0) >= outline.min(axis=0) - spacing_px)


def test_tissue_outlines_are_outer_rings_only_even_around_a_hole():
    from hespotex.outputs.qupath import tissue_outlines

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


def test_every_spot_carries_its_qc_scores_and_decision_into_the_map_and_qc_json(decoded):
    _, paths = decoded
    adata = ad.read_h5ad(paths.expression)
    spots = read_spots(paths.spots)
    for column in ("tissue_fraction", "ink_fraction", "fold_fraction", "blur_score"):
        assert np.allclose(adata.obs[column].to_numpy(), spots[column].to_numpy())
    assert set(adata.obs["qc"]) <= {"ok", "flagged"}
    assert adata.obs["blur_score"].between(0, 1).all()
    qc = json.loads(paths.qc.read_text())
    summary = json.loads(paths.spot_qc.read_text())
    assert qc["quality_control"] == summary == adata.uns["hespotex"]["quality_control"]
    assert summary["kept"] == adata.n_obs == qc["spots"]
    assert summary["tissue_spots"] == summary["kept"] + summary["dropped"]
    assert summary["dropped"] == len(read_spots(paths.dropped_spots))
    assert set(summary["shares"]) == {"ink", "fold", "blur"}
    assert qc["ink_area_mm2"] == {} and qc["fold_area_mm2"] >= 0
