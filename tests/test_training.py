"""Training on real H&E pixels: planted signal recovered on a held-out section, above the
ridge probe; resuming an interrupted training; gene selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA
from scipy import sparse

from hespotex.config import LibrarySize, ServedModel, parse_config
from hespotex.demo.builder import HER2ST_MPP, her2st_image, patch_statistics, read_image
from hespotex.encoder.build import load_encoder
from hespotex.encoder.runners import TorchRunner
from hespotex.errors import InputDataError
from hespotex.evaluation.evaluate import evaluate_encoded
from hespotex.io.backends import ArraySlide
from hespotex.io.sections import Section, SectionSource, load_section
from hespotex.io.slide import Slide
from hespotex.metrics import pearson_per_gene
from hespotex.network.probe import fit_probe
from hespotex.network.spot_graph import knn_edges
from hespotex.training.data import encode_sections
from hespotex.training.fit import fit
from hespotex.training.genes import gene_sets, select_genes

PLANTED = ("PLANTED_NUCLEI", "PLANTED_STROMA", "PLANTED_DENSE")
N_NOISE = 4
SECTIONS = ("B4", "C3", "C4", "C2")  # train, train, validation, test
PLANTED_CONFIG = {
    "encoder": {"architecture": "stain-stats"},
    "features": {"device": "cpu"},
    # The planted signal is clean and the sections small: a full step and light dropout learn
    # it within 300 epochs (the regularised preset is for noisy real data).
    "training": {
        "gene_selection": "shared",
        "gate_epochs": 100,
        "epochs": 300,
        "patience": 60,
        "lr": 1e-3,
        "weight_decay": 1e-3,
        "dropout": 0.3,
        "feature_dropout": 0.0,
        "weight_average": 0.0,
    },
}


def planted_signal(statistics: np.ndarray, centres: np.ndarray, rng) -> np.ndarray:
    """Known functions of patch content (haematoxylin, eosin, optical density, on one scale
    for every section), mostly from the spot's neighbours (so a model that reads the spot
    graph has an edge over one that sees a patch alone), plus noise."""
    standard = (statistics - np.array([0.065, 0.0045, 0.6])) / np.array([0.025, 0.003, 0.17])
    content = np.stack([np.tanh(standard[:, 0]), standard[:, 1], standard[:, 2]], axis=1)
    edges = knn_edges(centres, 6)
    neighbours = np.zeros_like(content)
    np.add.at(neighbours, edges[1], content[edges[0]])
    neighbours /= np.bincount(edges[1], minlength=len(content))[:, None]
    return 0.1 * content + 0.9 * neighbours + rng.normal(0, 0.05, content.shape)


@pytest.fixture(scope="module")
def planted_sections() -> list[Section]:
    """HER2ST sections (real images, real spot positions) with planted expression: counts of
    the planted genes follow ``planted_signal``; noise genes and a background gene do not."""
    rng = np.random.default_rng(11)
    sections = []
    for name in SECTIONS:
        spots = pd.read_csv(SHARED_DATA / "her2st" / name / "spots.tsv", sep="\t")
        centres = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
        image = her2st_image(SHARED_DATA, name)
        slide = Slide(ArraySlide(read_image(image), image), HER2ST_MPP, "test")
        signal = planted_signal(patch_statistics(slide, centres), centres, rng)
        planted = rng.poisson(1000 * np.exp(0.8 * signal))
        library = rng.lognormal(0, 0.2, (len(centres), 1))
        noise = rng.poisson(rng.lognormal(3, 0.5, N_NOISE) * library)
        background = rng.poisson(3000, (len(centres), 1))
        counts = np.concatenate([planted, noise, background], axis=1)
        genes = pd.Index([*PLANTED, *(f"NOISE_{i}" for i in range(N_NOISE)), "BACKGROUND"])
        spot_ids = pd.Index([f"{name}-{index}" for index in range(len(centres))])
        sections.append(
            Section(
                name,
                image,
                HER2ST_MPP,
                sparse.csr_matrix(counts, dtype=np.float32),
                genes,
                spot_ids,
                centres,
            )
        )
    return sections


@pytest.mark.slow
def test_planted_genes_are_recovered_on_a_held_out_section_above_the_ridge_probe(
    planted_sections,
):
    config = parse_config(PLANTED_CONFIG)
    runner = TorchRunner(load_encoder(config.encoder), torch.device("cpu"))
    encoded = {item.section_id: item for item in encode_sections(planted_sections, config, runner)}
    *training, validation, test = SECTIONS
    checkpoint = fit(
        [encoded[name] for name in (*training, validation)],
        validation,
        config,
        runner.identity,
    )
    meta = checkpoint.meta
    assert meta.trained_on == training and meta.training["chosen_epoch"] >= 1
    scores, _ = evaluate_encoded(checkpoint, [encoded[test]], None, ServedModel.HESPOTEX)
    by_model = {
        model: table.set_index("gene")["pearson"] for model, table in scores.groupby("model")
    }
    by_gene, ridge_by_gene = by_model["hespotex"], by_model["probe"]
    planted = by_gene[list(PLANTED)]
    noise = by_gene[[gene for gene in meta.genes if gene.startswith("NOISE")]]
    assert planted.mean() >= 0.8, planted
    assert planted.mean() > ridge_by_gene[list(PLANTED)].mean() + 0.02
    assert abs(noise.mean()) < 0.15 and noise.abs().max() < 0.35, noise


@pytest.mark.slow
def test_training_in_blocks_resumes_where_it_was_interrupted(
    planted_sections, tmp_path, monkeypatch
):
    """Sections of ≈ 190 spots trained in blocks of 60 (as a 200,000-spot section trains in
    blocks of 10,000), with the weights averaged over epochs: interrupted and resumed, the
    model is the uninterrupted one."""
    from hespotex.training import fit as fitting

    config = parse_config(
        {
            **PLANTED_CONFIG,
            "training": {
                **PLANTED_CONFIG["training"],
                "gate_epochs": 20,
                "epochs": 12,
                "patience": 50,
                "resume_every": 5,
                "spots_per_step": 60,
                "weight_average": 0.5,
            },
        }
    )
    runner = TorchRunner(load_encoder(config.encoder), torch.device("cpu"))
    encoded = encode_sections(planted_sections[1:], config, runner)
    record = runner.identity
    uninterrupted, _, _ = fit(encoded, "C4", config, record)
    resume = tmp_path / "model.safetensors.resume.pt"
    original_epoch = fitting.image_stream_epoch
    calls = []

    def interrupted_epoch(*args):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return original_epoch(*args)

    monkeypatch.setattr(fitting, "image_stream_epoch", interrupted_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(encoded, "C4", config, record, resume)
    assert resume.is_file()
    assert torch.load(resume, weights_only=True)["epoch"] == 5
    monkeypatch.setattr(fitting, "image_stream_epoch", original_epoch)
    resumed, _, meta = fit(encoded, "C4", config, record, resume)
    assert not resume.exists()
    assert meta.training["epochs_run"] == 12
    for name, tensor in uninterrupted.state_dict().items():
        assert torch.allclose(tensor, resumed.state_dict()[name]), name


def test_hvg_union_is_depth_aware_and_logged(caplog):
    """seurat_v3 per section on counts: a gene varying only by depth in a shallow section
    is not chosen; a gene a file names is kept in the file's set."""
    rng = np.random.default_rng(5)
    sections = []
    for name, depth in (("deep", 20.0), ("shallow", 1.0)):
        n = 300
        library = rng.lognormal(0, 0.1, (n, 1)) * depth
        variable_rates = np.array([1.0, 3.0, 10.0, 30.0, 60.0])
        variable = rng.poisson(library * np.exp(rng.normal(0, 1.0, (n, 5))) * variable_rates)
        flat = rng.poisson(library * np.logspace(-0.5, 2, 40))
        counts = np.concatenate([variable, flat], axis=1)
        genes = pd.Index([*(f"VAR{i}" for i in range(5)), *(f"FLAT{i}" for i in range(40))])
        sections.append(
            Section(
                name,
                SHARED_DATA,
                None,
                sparse.csr_matrix(counts, dtype=np.float32),
                genes,
                pd.Index(map(str, range(n))),
                rng.uniform(0, 100, (n, 2)),
            )
        )
    config = parse_config({**PLANTED_CONFIG, "training": {"n_genes": 5, "top_variance_genes": 0}})
    with caplog.at_level("INFO", logger="hespotex.training.genes"):
        chosen = select_genes(sections, config.training)
    assert sorted(chosen) == [f"VAR{i}" for i in range(5)]
    assert "genes: 5 (union of each section's top 5 seurat_v3 genes) of 45 shared" in caplog.text


def test_genes_come_most_variable_first():
    """Eight genes of one mean whose overdispersion grows 1.5-fold from one to the next (names
    shuffled), among 300 Poisson genes of every depth: the eight are chosen, the most
    overdispersed first."""
    rng = np.random.default_rng(3)
    n_spots = 1000
    dispersion = 0.1 * 1.5 ** np.arange(8)
    names = [f"G{index}" for index in rng.permutation(8)]
    varying = rng.poisson(20 * rng.gamma(1 / dispersion, dispersion, (n_spots, 8)))
    flat = rng.poisson(np.logspace(0, 2.5, 300), (n_spots, 300))
    section = Section(
        "overdispersed",
        SHARED_DATA,
        None,
        sparse.csr_matrix(np.concatenate([varying, flat], axis=1), dtype=np.float32),
        pd.Index([*names, *(f"FLAT{index}" for index in range(300))]),
        pd.Index(map(str, range(n_spots))),
        rng.uniform(0, 100, (n_spots, 2)),
    )
    config = parse_config({**PLANTED_CONFIG, "training": {"n_genes": 8, "top_variance_genes": 0}})
    assert select_genes([section], config.training) == names[::-1]


def test_the_gene_sets_are_the_pooled_top_variance_and_the_marker_panel_present():
    """top_variance: the genes of highest variance of log1p CPM (over all of a spot's counts)
    across the training sections' spots pooled, highest first; markers: the panel's genes
    every section has. Both are predicted whatever their seurat_v3 rank."""
    rng = np.random.default_rng(7)
    names = pd.Index([f"G{index}" for index in range(30)])

    def section(name, n_spots, depth):
        counts = rng.poisson(depth * rng.dirichlet(np.ones(30) * 0.5, n_spots))
        return _section(name, counts, list(names))

    sections = [section("a", 200, 2000), section("b", 150, 200)]
    pooled = []
    for item in sections:
        counts = item.counts.toarray()
        pooled.append(np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e6))
    variance = np.concatenate(pooled).var(axis=0)
    expected = [names[index] for index in np.argsort(-variance)[:4]]
    config = parse_config(
        {
            **PLANTED_CONFIG,
            "training": {"n_genes": 2, "top_variance_genes": 4,
                         "marker_genes": ["G29", "G3", "NOT_HERE"]},
        }
    )  # fmt: skip
    sets = gene_sets(sections, config.training, list(names))
    assert sets == {"top_variance": expected, "markers": ["G29", "G3"]}
    chosen = select_genes(sections, config.training)
    assert set(expected) | {"G29", "G3"} <= set(chosen)
    assert len(chosen) <= 2 * 2 + 4 + 2


def test_genes_of_a_real_section_are_chosen_among_its_own():
    source = SectionSource(
        "mob",
        SHARED_DATA / "xfuse-mob-st" / "image.jpg",
        SHARED_DATA / "xfuse-mob-st" / "counts.tsv",
        SHARED_DATA / "xfuse-mob-st" / "spots.tsv",
        mpp=6.9,
    )
    section = load_section(source)
    config = parse_config({**PLANTED_CONFIG, "training": {"n_genes": 3, "top_variance_genes": 0}})
    chosen = select_genes([section], config.training)
    assert len(chosen) == 3 and set(chosen) <= set(section.genes)


def test_nuclei_are_counted_on_real_he_pixels_and_not_on_glass(he_tile):
    from hespotex.encoder.nuclei import count_nuclei

    patches = np.stack(
        [he_tile[:224, :224], he_tile[500:724, 300:524], np.full_like(he_tile[:224, :224], 240)]
    )
    counts = count_nuclei(patches, mpp=0.5)
    assert counts[2] == 0
    assert np.all((counts[:2] >= 5) & (counts[:2] <= 200)), counts


def test_presets_fill_regularisation_and_explicit_keys_win():
    paper = parse_config({**PLANTED_CONFIG, "training": {"preset": "paper"}}).training
    assert (paper.dropout, paper.feature_dropout, paper.lr, paper.epochs) == (0.0, 0.0, 1e-3, 50)
    mixed = parse_config({**PLANTED_CONFIG, "training": {"preset": "paper", "epochs": 80}})
    assert mixed.training.epochs == 80 and mixed.training.dropout == 0.0
    default = parse_config({**PLANTED_CONFIG, "training": {}}).training
    regularised = parse_config({**PLANTED_CONFIG, "training": {"preset": "regularised"}})
    assert default.model_dump(exclude={"preset"}) == regularised.training.model_dump(
        exclude={"preset"}
    )
    assert paper.n_genes == 1000 and paper.gate_k == 7
    assert paper.library_size == LibrarySize.SELECTED_GENES
    assert default.library_size == LibrarySize.ALL_GENES and default.min_cells == 1


def _section(name: str, counts: np.ndarray, genes: list[str]) -> Section:
    n_spots = len(counts)
    return Section(
        name,
        SHARED_DATA,
        None,
        sparse.csr_matrix(counts, dtype=np.float32),
        pd.Index(genes),
        pd.Index(map(str, range(n_spots))),
        np.random.default_rng(0).uniform(0, 100, (n_spots, 2)),
    )


def test_cpm_over_all_counts_or_over_the_chosen_genes_as_the_authors_do():
    section = _section("cpm", np.array([[10, 30, 60], [0, 5, 5]]), ["A", "B", "C"])
    everything = np.expm1(section.log_expression(["A", "B"]))
    assert np.allclose(everything, [[1e5, 3e5], [0, 5e5]])
    chosen = np.expm1(section.log_expression(["A", "B"], library_size=LibrarySize.SELECTED_GENES))
    assert np.allclose(chosen, [[2.5e5, 7.5e5], [0, 1e6]])


def test_genes_of_interest_are_added_and_undetected_genes_left_out():
    """A gene no spot of one training section detects is not chosen (the authors' per-section
    min_cells=1); ``include_genes`` are predicted even when not among the most variable; a gene
    of interest a section lacks is refused by name."""
    rng = np.random.default_rng(2)
    sections = []
    for name in ("one", "two"):
        varying = rng.poisson(20 * rng.gamma(2.0, 0.5, (200, 3)))
        steady = rng.poisson(30, (200, 1))
        silent = (
            np.zeros((200, 1)) if name == "two" else rng.poisson(40 * rng.gamma(0.5, 2, (200, 1)))
        )
        counts = np.concatenate([varying, steady, silent], axis=1)
        sections.append(_section(name, counts, ["V0", "V1", "V2", "STEADY", "SILENT_IN_TWO"]))
    config = parse_config(
        {**PLANTED_CONFIG, "training": {"n_genes": 3, "include_genes": ["STEADY"]}}
    ).training
    chosen = select_genes(sections, config)
    assert set(chosen) == {"V0", "V1", "V2", "STEADY"}
    wanting = config.model_copy(update={"include_genes": ["SILENT_IN_TWO"]})
    with pytest.raises(InputDataError, match="SILENT_IN_TWO not in every section"):
        select_genes(sections, wanting)


def test_weight_average_follows_the_weights_over_epochs():
    from hespotex.network.streams import ImageStream, ImageStreamShape
    from hespotex.training.fit import WeightAverage

    torch.manual_seed(0)
    model = ImageStream(ImageStreamShape(feature_dim=4, latent_dim=2, n_genes=3))
    assert WeightAverage(model, 0.0).model is model
    average = WeightAverage(model, 0.75)
    start = [parameter.detach().clone() for parameter in model.parameters()]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(4.0)
    average.update(model)
    for averaged, before in zip(average.model.parameters(), start, strict=True):
        assert torch.allclose(averaged, before + 1.0)


@pytest.mark.slow
def test_pretrained_features_predict_real_marker_genes_of_another_section():
    """The default encoder's features carry what the demo maps show: from HER2ST C3 (real
    counts at its real spots) to the next section, C4, a ridge probe on EfficientNet-Lite0's
    ImageNet features predicts HER2, epithelial, immune and stromal genes (each r > 0.2,
    ≈ 0.37 on average). It says nothing of random features: a random vit-tiny-32 scored 0.44
    on this pair (benchmarks/RESULTS.md compares encoders over all four sections)."""
    sections = [
        load_section(
            SectionSource(
                name,
                her2st_image(SHARED_DATA, name),
                SHARED_DATA / "her2st" / name / "counts.tsv.gz",
                SHARED_DATA / "her2st" / name / "spots.tsv",
                mpp=HER2ST_MPP,
            )
        )
        for name in ("C3", "C4")
    ]
    markers = ["ERBB2", "EPCAM", "CD74", "IGKC", "COL1A1"]
    config = parse_config({"encoder": {}, "features": {"device": "cpu"}})
    assert config.encoder.architecture == "efficientnet-lite0-imagenet"
    runner = TorchRunner(load_encoder(config.encoder), torch.device("cpu"))
    train, test = encode_sections(sections, config, runner)
    probe = fit_probe([train.features], [train.section.log_expression(markers)], None)
    scores = pearson_per_gene(test.section.log_expression(markers), probe.predict(test.features))
    assert scores.min() > 0.2 and scores.mean() > 0.3, dict(zip(markers, scores, strict=True))
