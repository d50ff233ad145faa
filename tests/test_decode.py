"""Decode: the checkpoint's predictions over a real slide's spot graph, written as an h5ad
that scanpy and squidpy read unchanged; the checks that refuse a mismatched encoder, checkpoint
or config before or during a run."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SVS, TEST_ENCODER

from hespotex.config import ServedModel, parse_config
from hespotex.errors import CheckpointError, ConfigError, EncoderMismatchError, InputDataError
from hespotex.io.slide import open_slide
from hespotex.io.stores import read_feature_store, read_graph_store
from hespotex.network.checkpoint import (
    SERVABLE,
    load_checkpoint,
    read_checkpoint_meta,
    score_name,
)
from hespotex.network.serving import served_prediction
from hespotex.paths import SlidePaths
from hespotex.pipeline.preflight import check_run
from hespotex.stages.decode import run_decode
from hespotex.stages.features import run_features
from hespotex.stages.graph import run_graph
from hespotex.stages.tiles import run_tiles
from hespotex.stages.tissue import run_tissue


def test_checkpoint_carries_genes_encoder_and_normalisation(trained_checkpoint):
    meta = read_checkpoint_meta(trained_checkpoint)
    assert "PLANTED_HEMATOXYLIN" in meta.genes and len(meta.genes) == 32
    assert meta.encoder.architecture == "vit-tiny-32"
    assert meta.encoder.weights_sha256 == "random-seed-0"
    assert meta.normalisation == "cpm_log1p" and meta.target_sum == 1e6
    assert meta.graph_k == 4 and meta.latent_dim == 64
    assert meta.trained_on == ["b4-left"]
    assert meta.training["validation_section"] == "b4-right"
    model, probe, _ = load_checkpoint(trained_checkpoint)
    assert model.shape.n_genes == 32 and probe.linear.out_features == 32
    scores = dict(zip(meta.genes, meta.gene_scores["validation_pearson"], strict=True))
    assert "b4-right" in meta.gene_score_sources["validation_pearson"]
    planted = [scores[gene] for gene in meta.genes if gene.startswith("PLANTED")]
    noise = [scores[gene] for gene in meta.genes if gene.startswith("NOISE")]
    assert all(-1 <= value <= 1 for value in planted + noise)
    assert np.mean(planted) > np.mean(noise) + 0.3
    assert np.mean(planted + noise) == pytest.approx(meta.training["validation_pearson"], abs=1e-3)


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
    assert adata.uns["hespotex"]["encoder"]["weights"] == "random"
    assert "RANDOM weights" in adata.uns["hespotex"]["encoder_description"]
    assert np.isfinite(adata.X).all() and adata.X.std(axis=0).max() > 0
    meta = read_checkpoint_meta(adata.uns["hespotex"]["checkpoint"])
    assert adata.var["validation_pearson"].tolist() == pytest.approx(
        meta.gene_scores["validation_pearson"]
    )
    assert "b4-right" in adata.uns["hespotex"]["gene_scores"]["validation_pearson"]


def decoded_again(config, paths, results, **decode):
    """The decoded slide's decode stage again, into ``results``, with other decode settings."""
    again = config.model_copy(
        update={"results": results, "decode": config.decode.model_copy(update=decode)}
    )
    again_paths = SlidePaths(again.results, "svs")
    for name in ("tissue_record", "spots", "features", "graph", "thumbnail"):
        target = getattr(again_paths, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(getattr(paths, name).resolve())
    run_decode("svs", again)
    return again, again_paths


@pytest.mark.parametrize("serve", ["ensemble", "best"])
def test_each_gene_is_served_by_the_model_decode_serve_and_the_scores_say(decoded, tmp_path, serve):
    """ensemble (the default) serves the mean of HESpotEx and the probe for every gene; best
    takes each gene's column from the model with the highest validation Pearson; ``var`` says
    which, with that model's score."""
    config, paths = decoded
    if serve != config.decode.serve.value:
        config, paths = decoded_again(config, paths, tmp_path / "results", serve=ServedModel(serve))
    adata = ad.read_h5ad(paths.expression)
    model, probe, meta = load_checkpoint(config.decode.checkpoint)
    served = meta.served_models(ServedModel(serve), config.decode.checkpoint)
    assert adata.var["served_model"].tolist() == [name.value for name in served]
    scores = {name: meta.gene_scores[score_name(name, "validation_pearson")] for name in SERVABLE}
    for index, name in enumerate(served):
        if serve == "best":
            assert scores[name][index] == max(values[index] for values in scores.values())
        assert adata.var["served_pearson"].iloc[index] == pytest.approx(scores[name][index])
    if serve == "ensemble":
        assert set(served) == {ServedModel.ENSEMBLE}
    else:
        assert len(set(served)) > 1
    features = torch.from_numpy(read_feature_store(paths.features).features)
    edges = torch.from_numpy(read_graph_store(paths.graph)[0])
    expected = served_prediction(
        model.predict(features, edges).numpy(), probe.predict(features), served
    )
    assert np.allclose(adata.X, expected, atol=1 / 1024)
    assert adata.uns["hespotex"]["served"] == serve


def test_min_gene_pearson_keeps_the_trusted_genes_and_preflight_names_the_dropped(
    decoded, tmp_path
):
    config, paths = decoded
    meta = read_checkpoint_meta(config.decode.checkpoint)
    served = meta.served_scores(meta.served_models(config.decode.serve, "checkpoint"))
    scores = dict(zip(meta.genes, served, strict=True))
    threshold = float(np.median(list(scores.values())))
    strict = config.model_copy(
        update={"outputs": config.outputs.model_copy(update={"min_gene_pearson": threshold})}
    )
    strict, strict_paths = decoded_again(strict, paths, tmp_path / "results")
    kept = ad.read_h5ad(strict_paths.expression)
    assert list(kept.var_names) == [gene for gene in meta.genes if scores[gene] >= threshold]
    assert (kept.var["served_pearson"] >= threshold).all() and 0 < kept.n_vars < 32
    everything = ad.read_h5ad(paths.expression)
    assert np.allclose(kept.X, everything[:, kept.var_names].X)
    assert kept.uns["hespotex"]["min_gene_pearson"] == threshold
    weakest = min(scores, key=scores.get)
    sheet = tmp_path / "s.tsv"
    sheet.write_text(f"slide_id\tpath\nsvs\t{SVS}\n")
    wanting = {
        "samples": str(sheet),
        "encoder": TEST_ENCODER,
        "decode": {"checkpoint": str(config.decode.checkpoint)},
        "outputs": {"genes": [weakest], "min_gene_pearson": threshold},
    }
    with pytest.raises(ConfigError, match=f"{weakest} left out by outputs.min_gene_pearson"):
        check_run(parse_config(wanting))
    with pytest.raises(ConfigError, match="leaves no gene"):
        meta.genes_kept(0.999, config.decode.serve, config.decode.checkpoint)


def test_crossval_scores_travel_into_the_checkpoint_only_from_the_same_encoder(
    tmp_path, trained_checkpoint
):
    from hespotex.evaluation.crossval import with_cv_scores

    meta = read_checkpoint_meta(trained_checkpoint)
    run = tmp_path / "cv"
    run.mkdir()
    genes = meta.genes[:3]
    rows = [
        {"section": section, "gene": gene, "pearson": value, "model": model, "seed": 0}
        for section, values in (("a", (0.2, 0.4, np.nan)), ("b", (0.4, 0.0, np.nan)))
        for gene, value in zip(genes, values, strict=True)
        for model in ("hespotex", "probe")
    ]
    rows.append({"section": "a", "gene": genes[0], "pearson": -0.9, "model": "probe", "seed": 1})
    pd.DataFrame(rows).to_csv(run / "genes.tsv", sep="\t", index=False)
    (run / "summary.json").write_text(
        json.dumps({"encoder_identity": meta.encoder.model_dump(mode="json")})
    )
    scored = with_cv_scores(meta, run)
    cv = dict(zip(scored.genes, scored.gene_scores["cv_pearson"], strict=True))
    assert cv[genes[0]] == pytest.approx(0.3) and cv[genes[1]] == pytest.approx(0.2)
    assert cv[genes[2]] is None and cv[meta.genes[5]] is None
    assert "2 sections × 1 seeds" in scored.gene_score_sources["cv_pearson"]
    probe_cv = dict(zip(scored.genes, scored.gene_scores["probe_cv_pearson"], strict=True))
    assert probe_cv[genes[0]] == pytest.approx((0.2 + 0.4 - 0.9) / 3)
    assert "ensemble_cv_pearson" not in scored.gene_scores
    assert scored.trusted_score() == "cv_pearson"
    assert scored.genes_kept(0.25, ServedModel.HESPOTEX, "ckpt") == [genes[0]]
    assert scored.served_models(ServedModel.BEST, "ckpt")[:2] == [ServedModel.HESPOTEX] * 2
    other = meta.encoder.model_copy(update={"weights_sha256": "f" * 64})
    (run / "summary.json").write_text(
        json.dumps({"encoder_identity": other.model_dump(mode="json")})
    )
    with pytest.raises(EncoderMismatchError, match="run crossval with the encoder you train"):
        with_cv_scores(meta, run)
    (run / "summary.json").write_text('{"encoder_identity": ')
    with pytest.raises(InputDataError, match="not a crossval summary.json"):
        with_cv_scores(meta, run)
    pd.DataFrame(rows).drop(columns="pearson").to_csv(run / "genes.tsv", sep="\t", index=False)
    with pytest.raises(InputDataError, match=r"genes.tsv: .*no column\(s\) pearson"):
        with_cv_scores(meta, run)


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
    metadata["attributes"]["encoder"]["weights_sha256"] = "0" * 64
    attributes_file.write_text(json.dumps(metadata))
    try:
        with pytest.raises(EncoderMismatchError) as error:
            run_decode("svs", config)
        assert str(trained_checkpoint) in str(error.value)
        assert "use the encoder the checkpoint was trained with" in str(error.value)
        assert str(paths.features) in str(error.value) and "0" * 64 in str(error.value)
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
    with pytest.raises(EncoderMismatchError, match="random-seed-1"):
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
    the authors' factor (counts clipped to 1..20, over the slide's largest, plus 1), and refuses
    a store written for a checkpoint without them."""
    from hespotex.network.checkpoint import Checkpoint, save_checkpoint

    model, probe, meta = load_checkpoint(trained_checkpoint)
    scaled = tmp_path / "scaled.safetensors"
    save_checkpoint(
        scaled,
        Checkpoint(model, probe, meta.model_copy(update={"nucleus_counter": "hematoxylin"})),
    )
    _, unscaled_paths = decoded
    settings = {"encoder": TEST_ENCODER, "results": str(tmp_path / "results")}
    unscaled_config = parse_config({**settings, "decode": {"checkpoint": str(trained_checkpoint)}})
    # The factor is HESpotEx's (the probe is unscaled, as it was scored): served alone here.
    config = parse_config({**settings, "decode": {"checkpoint": str(scaled), "serve": "hespotex"}})
    paths = SlidePaths(config.results, "svs")
    with open_slide(SVS, "svs") as slide:
        run_tissue(slide, "svs", config)
        run_tiles(slide, "svs", config)
        run_features(slide, "svs", unscaled_config)
        run_graph("svs", config)
        assert read_feature_store(paths.features).nucleus_counts is None
        with pytest.raises(InputDataError, match="features.zarr.*--forcerun features"):
            run_decode("svs", config)
        run_features(slide, "svs", config)
        run_decode("svs", config)
    store = read_feature_store(paths.features)
    assert store.attributes["nucleus_counter"] == "hematoxylin"
    counts = store.nucleus_counts
    assert counts.shape == (len(store.features),) and counts.max() > 1
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    edges = torch.from_numpy(read_graph_store(unscaled_paths.graph)[0])
    unscaled = model.predict(torch.from_numpy(store.features), edges).numpy()
    unscaled = np.round(unscaled / config.outputs.expression_step) * config.outputs.expression_step
    predicted = ad.read_h5ad(paths.expression).X
    clipped = np.clip(counts, 1, 20)
    factor = clipped / clipped.max() + 1
    # Both maps are rounded to outputs.expression_step: the unscaled one's rounding error is
    # multiplied by the factor, the scaled one's is not.
    step = config.outputs.expression_step
    tolerance = step / 2 * (1 + factor.max()) + 1e-4
    assert np.abs(predicted - unscaled * factor[:, None]).max() <= tolerance


def test_a_store_or_checkpoint_of_an_older_hespotex_is_refused_saying_what_to_redo(
    decoded, tmp_path, trained_checkpoint
):
    """Version 1 wrote the encoder as loose attributes and checkpoint fields, version 2 an
    identity without the encoder's spec; both are refused with the file named, not misread."""
    from safetensors.torch import load_file, save_file

    from hespotex.errors import InputDataError

    config, paths = decoded
    attributes_file = paths.features / "zarr.json"
    original = attributes_file.read_text()
    metadata = json.loads(original)
    metadata["attributes"]["encoder"] = "vit-tiny-32"
    attributes_file.write_text(json.dumps(metadata))
    try:
        with pytest.raises(InputDataError, match=r"features\.zarr: no encoder identity .* again"):
            run_decode("svs", config)
    finally:
        attributes_file.write_text(original)
    meta = json.loads(read_checkpoint_meta(trained_checkpoint).model_dump_json())
    old = tmp_path / "old.safetensors"
    for version in (1, 2):
        save_file(
            load_file(str(trained_checkpoint)),
            str(old),
            metadata={"hespotex": json.dumps({**meta, "format_version": version})},
        )
        with pytest.raises(
            CheckpointError, match=rf"old\.safetensors: checkpoint format {version}, .* train"
        ):
            read_checkpoint_meta(old)
