"""`hespotex evaluate` end to end on the checkpoint trained on the demo's planted sections."""

import json

import pandas as pd
import pytest
import yaml
from conftest import SHARED_DATA, TEST_ENCODER
from PIL import Image

from hespotex.cli.main import main


def test_evaluate_scores_a_held_out_section_writing_genes_summary_and_maps(
    tmp_path, trained_checkpoint
):
    """The checkpoint trained on B4's left half, its epoch chosen on the right half, scored on
    HER2ST C3, which neither saw."""
    sheet = trained_checkpoint.parent / "planted" / "heldout.tsv"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"encoder": TEST_ENCODER, "features": {"device": "cpu"}}))
    out = tmp_path / "evaluation"
    status = main(
        ["evaluate", "--checkpoint", str(trained_checkpoint), "--sections", str(sheet),
         "--config", str(config), "--out", str(out), "--top-genes", "5"]
    )  # fmt: skip
    assert status == 0
    genes = pd.read_csv(out / "genes.tsv", sep="\t")
    assert len(genes) == 32 and set(genes["section"]) == {"c3"}
    assert genes["top_hvg"].sum() == 5
    assert genes["pearson"].between(-1, 1).all() and (genes["mse"] >= 0).all()
    summary = json.loads((out / "summary.json").read_text())["sections"]["c3"]
    assert summary["pearson_all"] == pytest.approx(genes["pearson"].mean())
    assert summary["n_genes"] == 32 and summary["n_spots"] == len(
        pd.read_csv(sheet.parent / "c3.spots.tsv", sep="\t")
    )
    planted = genes[genes["gene"].str.startswith("PLANTED")]["pearson"]
    noise = genes[genes["gene"].str.startswith("NOISE")]["pearson"]
    assert planted.mean() > noise.mean() + 0.2
    with Image.open(out / "c3.maps.png") as image:
        assert image.width > 300 and image.height > 1000


def test_evaluate_refuses_a_checkpoint_of_another_encoder(tmp_path, trained_checkpoint):
    sheet = trained_checkpoint.parent / "planted" / "sections.tsv"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"encoder": {"architecture": "stain-stats"}}))
    status = main(
        ["evaluate", "--checkpoint", str(trained_checkpoint), "--sections", str(sheet),
         "--config", str(config), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert status == 1
    assert not (tmp_path / "out" / "genes.tsv").exists()


def test_crossval_writes_folds_and_mean_sd_over_seeds(tmp_path):
    """Three sections cut from the real xfuse ST section (left, middle, right third)."""
    xfuse = SHARED_DATA / "xfuse-mob-st"
    counts = pd.read_csv(xfuse / "counts.tsv", sep="\t", index_col=0)
    spots = pd.read_csv(xfuse / "spots.tsv", sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    spots = spots.loc[counts.index]
    thirds = pd.qcut(spots["pixel_x"], 3, labels=["left", "middle", "right"])
    rows = ["section_id\timage\tcounts\tspots\tmpp"]
    for name in ("left", "middle", "right"):
        keep = (thirds == name).to_numpy()
        counts[keep].to_csv(tmp_path / f"{name}.counts.tsv", sep="\t")
        spots[keep].to_csv(tmp_path / f"{name}.spots.tsv", sep="\t", index=False)
        rows.append(f"{name}\t{xfuse / 'image.jpg'}\t{name}.counts.tsv\t{name}.spots.tsv\t6.9")
    (tmp_path / "sections.tsv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "encoder": {"architecture": "stain-stats"},
                "features": {"patch_px": 16, "patch_mpp": 7.0, "device": "cpu"},
                "training": {"gate_epochs": 10, "epochs": 5, "min_spot_counts": 0,
                             "gene_selection": "shared"},
            }
        )
    )  # fmt: skip
    out = tmp_path / "cv"
    status = main(
        ["crossval", "--sections", str(tmp_path / "sections.tsv"), "--config", str(config),
         "--out", str(out), "--seeds", "0", "1", "--top-genes", "4"]
    )  # fmt: skip
    assert status == 0
    folds = pd.read_csv(out / "folds.tsv", sep="\t")
    assert len(folds) == 6 and set(folds["test"]) == {"left", "middle", "right"}
    assert (folds["test"] != folds["validation"]).all()
    assert folds["n_genes"].eq(10).all()
    genes = pd.read_csv(out / "genes.tsv", sep="\t")
    assert set(genes["model"]) == {"hespotex", "ridge"} and len(genes) == 6 * 2 * 10
    summary = json.loads((out / "summary.json").read_text())
    per_seed = folds.groupby("seed")["hespotex_pearson_all"].mean()
    assert summary["overall"]["hespotex_pearson_all"]["mean"] == pytest.approx(per_seed.mean())
    assert summary["overall"]["hespotex_pearson_all"]["sd"] == pytest.approx(per_seed.std())
    table = (out / "summary.md").read_text().splitlines()
    assert len(table) == 2 + 3 + 1 and "ridge pearson_top_hvg" in table[0]
