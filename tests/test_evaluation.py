"""`hespotex evaluate` end to end on the checkpoint trained on the demo's planted sections."""

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SHARED_DATA, TEST_ENCODER
from PIL import Image

from hespotex.cli.main import main


def test_evaluate_scores_a_held_out_section_writing_genes_summary_and_maps(
    tmp_path, trained_checkpoint, demo_sections
):
    """The checkpoint trained on B4's left half, its epoch chosen on the right half, scored on
    HER2ST C3, which neither saw."""
    sheet = demo_sections.parent / "heldout.tsv"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"encoder": TEST_ENCODER, "features": {"device": "cpu"}}))
    out = tmp_path / "evaluation"
    status = main(
        ["evaluate", "--checkpoint", str(trained_checkpoint), "--sections", str(sheet),
         "--config", str(config), "--out", str(out)]
    )  # fmt: skip
    assert status == 0
    table = pd.read_csv(out / "genes.tsv", sep="\t")
    assert set(table["model"]) == {"hespotex", "probe", "ensemble", "best"}
    genes = table[table["model"] == "ensemble"]
    assert len(genes) == 32 and set(genes["section"]) == {"c3"}
    assert genes["in_top_variance"].sum() == 32 and not genes["in_markers"].any()
    assert table["pearson"].between(-1, 1).all() and (table["mse"] >= 0).all()
    summary = json.loads((out / "summary.json").read_text())["sections"]["c3"]
    assert summary["served"] == "ensemble"
    assert summary["pearson_all"] == pytest.approx(genes["pearson"].mean())
    assert summary["n_genes"] == 32 and summary["n_spots"] == len(
        pd.read_csv(sheet.parent / "c3.spots.tsv", sep="\t")
    )
    planted = genes[genes["gene"].str.startswith("PLANTED")]["pearson"]
    noise = genes[genes["gene"].str.startswith("NOISE")]["pearson"]
    assert planted.mean() > noise.mean() + 0.2
    with Image.open(out / "c3.maps.png") as image:
        assert image.width > 300 and image.height > 1000


def test_evaluate_refuses_a_checkpoint_of_another_encoder(
    tmp_path, trained_checkpoint, demo_sections, caplog
):
    sheet = demo_sections
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"encoder": {"architecture": "stain-stats"}}))
    status = main(
        ["evaluate", "--checkpoint", str(trained_checkpoint), "--sections", str(sheet),
         "--config", str(config), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert status == 1
    assert "use the encoder the checkpoint was trained with" in caplog.text
    assert not (tmp_path / "out" / "genes.tsv").exists()


def xfuse_thirds(folder, shuffle_right: bool = False):
    """Three sections cut from the real xfuse ST section (left, middle, right third); the
    right one's expression optionally shuffled between its spots."""
    xfuse = SHARED_DATA / "xfuse-mob-st"
    counts = pd.read_csv(xfuse / "counts.tsv", sep="\t", index_col=0)
    spots = pd.read_csv(xfuse / "spots.tsv", sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    spots = spots.loc[counts.index]
    thirds = pd.qcut(spots["pixel_x"], 3, labels=["left", "middle", "right"])
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["section_id\timage\tcounts\tspots\tmpp"]
    for name in ("left", "middle", "right"):
        keep = (thirds == name).to_numpy()
        section_counts = counts[keep]
        if shuffle_right and name == "right":
            order = np.random.default_rng(0).permutation(len(section_counts))
            section_counts = pd.DataFrame(
                section_counts.to_numpy()[order], section_counts.index, section_counts.columns
            )
        section_counts.to_csv(folder / f"{name}.counts.tsv", sep="\t")
        spots[keep].to_csv(folder / f"{name}.spots.tsv", sep="\t", index=False)
        rows.append(f"{name}\t{xfuse / 'image.jpg'}\t{name}.counts.tsv\t{name}.spots.tsv\t6.9")
    (folder / "sections.tsv").write_text("\n".join(rows) + "\n")
    return folder / "sections.tsv"


def crossval_config(folder, stain: str = "none", **training):
    config = folder / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "encoder": {"architecture": "stain-stats"},
                "features": {"patch_px": 16, "patch_mpp": 7.0, "device": "cpu"},
                "stain": {"normalisation": stain},
                "training": {"gate_epochs": 10, "epochs": 5, "min_spot_counts": 0,
                             "gene_selection": "shared", **training},
            }
        )
    )  # fmt: skip
    return config


@pytest.mark.parametrize("stain", ["none", "macenko"])
def test_crossval_writes_folds_and_mean_sd_over_seeds_for_each_model_and_gene_set(tmp_path, stain):
    """With stain normalisation each fold is normalised to its own training section's stain."""
    sheet = xfuse_thirds(tmp_path)
    config = crossval_config(
        tmp_path, stain, top_variance_genes=4, marker_genes=["Apoe", "Calm1", "NOT_A_GENE"]
    )
    out = tmp_path / "cv"
    status = main(
        ["crossval", "--sections", str(sheet), "--config", str(config),
         "--out", str(out), "--seeds", "0", "1"]
    )  # fmt: skip
    assert status == 0
    folds = pd.read_csv(out / "folds.tsv", sep="\t")
    assert len(folds) == 6 and set(folds["test"]) == {"left", "middle", "right"}
    assert (folds["test"] != folds["validation"]).all()
    assert folds["n_all"].eq(10).all() and folds["n_top_variance"].eq(4).all()
    assert folds["n_markers"].eq(2).all()
    served = folds[["served_hespotex", "served_probe", "served_ensemble"]].sum(axis=1)
    assert served.eq(10).all()
    genes = pd.read_csv(out / "genes.tsv", sep="\t")
    assert set(genes["model"]) == {"hespotex", "probe", "ensemble", "best"}
    assert len(genes) == 6 * 4 * 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stain_normalisation"] == stain and summary["served_by_default"] == "ensemble"
    for test, sets in summary["genes_by_test_section"].items():
        assert len(sets["top_variance"]) == 4 and set(sets["top_variance"]) <= set(sets["genes"])
        assert sets["markers"] == ["Apoe", "Calm1"], test
    per_seed = folds.groupby("seed")["hespotex_all"].mean()
    assert summary["overall"]["hespotex_all"]["mean"] == pytest.approx(per_seed.mean())
    assert summary["overall"]["hespotex_all"]["sd"] == pytest.approx(per_seed.std())
    lead = (folds["best_markers"] - folds["probe_markers"]).groupby(folds["seed"]).mean()
    assert summary["overall"]["lead_best_markers"]["mean"] == pytest.approx(lead.mean())
    table = (out / "summary.md").read_text()
    for gene_set in ("all", "top_variance", "markers"):
        assert f"**{gene_set}**" in table
    assert table.count("| **mean over folds** |") == 3


def test_no_choice_of_a_fold_depends_on_its_test_section(tmp_path):
    """The right third's expression shuffled between its spots changes its scores as a test
    section, and not one choice of the fold testing it: genes, gene sets, epoch, ridge
    strength, model served per gene."""
    runs = {}
    for shuffled in (False, True):
        folder = tmp_path / ("shuffled" if shuffled else "as-measured")
        sheet = xfuse_thirds(folder, shuffle_right=shuffled)
        config = crossval_config(folder, top_variance_genes=4, epochs=8, patience=8)
        status = main(
            ["crossval", "--sections", str(sheet), "--config", str(config),
             "--out", str(folder / "cv"), "--seeds", "0"]
        )  # fmt: skip
        assert status == 0
        folds = pd.read_csv(folder / "cv" / "folds.tsv", sep="\t").set_index("test")
        summary = json.loads((folder / "cv" / "summary.json").read_text())
        runs[shuffled] = folds, summary["genes_by_test_section"]
    (before, before_sets), (after, after_sets) = runs[False], runs[True]
    choices = ["genes", "chosen_epoch", "probe_alpha", "served_hespotex", "served_probe"]
    choices.append("served_ensemble")
    assert before_sets["right"] == after_sets["right"]
    assert before.loc["right", choices].equals(after.loc["right", choices])
    assert not np.isclose(before.loc["right", "hespotex_all"], after.loc["right", "hespotex_all"])
    assert not np.isclose(before.loc["right", "probe_all"], after.loc["right", "probe_all"])


def test_a_rerun_crossval_reuses_the_folds_it_scored_and_rescores_what_changed(
    tmp_path, monkeypatch, caplog
):
    """A killed crossval's scored folds and seeds are kept: the rerun scores only what is
    missing (a deleted record, an unreadable one, a new seed), seed by seed, and writes tables
    identical to the last digit; a record of other settings or other data is scored afresh."""
    import hespotex.evaluation.crossval as crossval

    scored = []
    score_fold = crossval._score_fold

    def recording_score_fold(encoded, roles, config, *args):
        scored.append((roles[0], config.training.seed))
        return score_fold(encoded, roles, config, *args)

    monkeypatch.setattr(crossval, "_score_fold", recording_score_fold)
    caplog.set_level(logging.INFO, logger=crossval.__name__)
    sheet = xfuse_thirds(tmp_path)
    out = tmp_path / "cv"

    def run(*seeds, **training):
        scored.clear()
        caplog.clear()
        config = crossval_config(tmp_path, top_variance_genes=4, **training)
        command = ["crossval", "--sections", str(sheet), "--config", str(config),
                   "--out", str(out), "--seeds", *map(str, seeds)]  # fmt: skip
        assert main(command) == 0
        return [(out / name).read_text() for name in ("folds.tsv", "genes.tsv", "summary.md")]

    def seed_rows(table: str, column: int, seed: int) -> list[str]:
        return [line for line in table.splitlines()[1:] if line.split("\t")[column] == str(seed)]

    first = run(0)
    assert scored == [("left", 0), ("middle", 0), ("right", 0)]
    assert sorted(path.name for path in (out / "runs").iterdir()) == [
        "left.seed0", "middle.seed0", "right.seed0"
    ]  # fmt: skip
    assert run(0) == first and scored == []
    assert caplog.text.count("already scored") == 3
    shutil.rmtree(out / "runs" / "middle.seed0")
    (out / "runs" / "right.seed0" / "record.json").write_text("{ cut short")
    folds, genes, _ = run(0, 1)
    assert scored == [("middle", 0), ("right", 0), ("left", 1), ("middle", 1), ("right", 1)]
    assert "right.seed0 is unreadable" in caplog.text
    assert seed_rows(folds, 2, 0) == first[0].splitlines()[1:]
    assert seed_rows(genes, -1, 0) == first[1].splitlines()[1:]
    assert len(seed_rows(folds, 2, 1)) == 3 and folds.splitlines()[0] == first[0].splitlines()[0]
    only_seed_1 = run(1)
    assert scored == [] and seed_rows(only_seed_1[1], -1, 1) == seed_rows(genes, -1, 1)

    counts_path = sheet.parent / "right.counts.tsv"
    counts = pd.read_csv(counts_path, sep="\t", index_col=0)
    counts.iloc[0, 0] += 1
    counts.to_csv(counts_path, sep="\t")
    run(1)
    assert scored == [("left", 1), ("middle", 1), ("right", 1)]
    assert caplog.text.count("scored with other settings, data or code") == 3
    run(1, epochs=6)
    assert len(scored) == 3 and "scored with other settings, data or code" in caplog.text
    run(1, epochs=6)
    assert scored == []


def test_the_code_digest_of_kept_folds_ignores_comments_and_docstrings_but_not_code(tmp_path):
    """Rewording a comment or docstring of the scoring code keeps a crossval's records; a change
    to what the code does, or a new module, makes them stale."""
    from hespotex.evaluation.crossval import code_digest

    package = tmp_path / "package"
    (package / "training").mkdir(parents=True)
    loop = package / "training" / "loop.py"
    loop.write_text('"""Trains."""\n\n\ndef step(x):\n    """One step."""\n    return x + 1\n')
    (package / "metrics.py").write_text("def score(a, b):\n    return a - b\n")

    def digest() -> str:
        return code_digest(package, ["metrics.py", "training"])

    kept = digest()
    loop.write_text(
        '"""Trains the network."""\n# why: one step per batch\ndef step(x):\n'
        '    """One optimiser step."""\n    return x + 1  # plus one\n'
    )
    assert digest() == kept
    loop.write_text("def step(x):\n    return x + 2\n")
    assert digest() != kept
    loop.write_text("def step(x):\n    return x + 1\n")
    assert digest() == kept
    (package / "training" / "schedule.py").write_text("RATE = 0.1\n")
    assert digest() != kept
