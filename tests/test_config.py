from pathlib import Path

import pytest
import yaml
from conftest import REPO, TEST_ENCODER, write_sheet

from hespotex.config import load_config, parse_config, read_sample_sheet
from hespotex.errors import ConfigError


def test_documented_defaults_parse_with_the_installed_pretrained_encoder():
    """config/config.yaml runs as written: its encoder's weights come with hespotex; an
    encoder whose weights must be given still refuses to run without them."""
    data = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = parse_config(data)
    assert config.encoder.architecture == "efficientnet-lite0-imagenet"
    assert config.encoder.uses_packaged_weights and not config.encoder.is_random
    assert config.grid.spacing_um == 100.0
    assert config.grid.layout == "hex"
    assert config.features.patch_px == 224
    assert config.features.patch_mpp == 0.5
    assert config.features.patch_um == pytest.approx(112.0)
    assert config.graph.k == 4
    assert config.outputs.min_gene_pearson is None
    data["encoder"]["architecture"] = "quiltnet-b-32"
    with pytest.raises(ConfigError, match=r"encoder\.weights is not set"):
        parse_config(data)


def test_the_documented_config_switched_to_the_paper_preset_gets_the_authors_settings():
    """A user who copies config/config.yaml and sets `preset: paper` gets the authors' genes,
    graph and library size: the template leaves the keys the presets fill to them."""
    data = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    data["training"]["preset"] = "paper"
    training = parse_config(data).training
    assert (training.n_genes, training.gate_k, training.library_size.value) == (
        1000,
        7,
        "selected_genes",
    )
    assert training.weight_average == 0.0 and training.dropout == 0.0


def test_demo_config_is_valid_and_uses_the_installed_pretrained_encoder():
    config = load_config(REPO / "config" / "demo.yaml")
    assert config.encoder.architecture == "efficientnet-lite0-imagenet"
    assert config.encoder.uses_packaged_weights and not config.encoder.is_random
    assert set(config.outputs.genes) <= set(config.training.include_genes)
    assert {"ERBB2", "KRT19", "PLANTED_HEMATOXYLIN"} <= set(config.outputs.genes)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"grid": {"spacing_um": -100}}, "grid.spacing_um"),
        ({"grid": {"min_tissue_fraction": 1.5}}, "grid.min_tissue_fraction"),
        ({"encoder": {**TEST_ENCODER, "architecture": "resnet-9000"}}, "encoder.architecture"),
        ({"features": {"patch_mpp": 0}}, "features.patch_mpp"),
        ({"grid": {"spacingum": 100}}, "grid.spacingum"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as error:
        parse_config({"encoder": TEST_ENCODER, **override}, "my.yaml")
    assert key in str(error.value)
    assert "my.yaml" in str(error.value)


def test_sample_sheet_reads_ids_paths_and_optional_mpp(tmp_path):
    sheet = write_sheet(tmp_path / "s.tsv", [("a-1", "x.svs", None), ("b_2", "y.tif", 0.5)])
    rows = read_sample_sheet(sheet)
    assert list(rows) == ["a-1", "b_2"]
    assert rows["a-1"].mpp is None
    assert rows["b_2"].mpp == 0.5
    assert rows["b_2"].slide_path == Path("y.tif")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a", "x", None), ("a", "y", None)], "line 3: duplicate slide_id 'a'"),
        ([("../evil", "x", None)], "line 2: slide_id"),
        ([("ok", "x", -1)], "line 2: mpp"),
        ([("ok", "x", 250)], "line 2: mpp"),
    ],
)
def test_bad_sample_rows_name_the_line(tmp_path, rows, message):
    sheet = write_sheet(tmp_path / "s.tsv", rows)
    with pytest.raises(ConfigError, match=message):
        read_sample_sheet(sheet)


def test_sample_sheet_without_path_column_says_which(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("slide_id\tmpp\na\t0.5\n")
    with pytest.raises(ConfigError, match="lacks column.*path"):
        read_sample_sheet(sheet)
