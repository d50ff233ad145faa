"""`hespotex evaluate` end to end on the checkpoint trained on the demo's planted sections."""

import json

import pandas as pd
import pytest
import yaml
from conftest import TEST_ENCODER
from PIL import Image

from hespotex.cli import main


def test_evaluate_writes_gene_scores_summary_and_maps(tmp_path, trained_checkpoint):
    sheet = trained_checkpoint.parent / "training" / "sections.tsv"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"encoder": TEST_ENCODER, "features": {"device": "cpu"}}))
    out = tmp_path / "evaluation"
    status = main(
        ["evaluate", "--checkpoint", str(trained_checkpoint), "--sections", str(sheet),
         "--section", "b4-right", "--config", str(config), "--out", str(out), "--top-genes", "5"]
    )  # fmt: skip
    assert status == 0
    genes = pd.read_csv(out / "genes.tsv", sep="\t")
    assert len(genes) == 32 and set(genes["section"]) == {"b4-right"}
    assert genes["top_hvg"].sum() == 5
    assert genes["pearson"].between(-1, 1).all() and (genes["mse"] >= 0).all()
    summary = json.loads((out / "summary.json").read_text())["sections"]["b4-right"]
    assert summary["pearson_all"] == pytest.approx(genes["pearson"].mean())
    assert summary["n_genes"] == 32 and summary["n_spots"] == 403
    planted = genes[genes["gene"].str.startswith("PLANTED")]["pearson"]
    noise = genes[genes["gene"].str.startswith("NOISE")]["pearson"]
    assert planted.mean() > noise.mean() + 0.2
    with Image.open(out / "b4-right.maps.png") as image:
        assert image.width > 300 and image.height > 1000


def test_evaluate_refuses_a_checkpoint_of_another_encoder(tmp_path, trained_checkpoint):
    sheet = trained_checkpoint.parent / "training" / "sections.tsv"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"encoder": {"architecture": "stain-stats"}}))
    status = main(
        ["evaluate", "--checkpoint", str(trained_checkpoint), "--sections", str(sheet),
         "--config", str(config), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert status == 1
    assert not (tmp_path / "out" / "genes.tsv").exists()
