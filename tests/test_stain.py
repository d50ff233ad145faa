"""Stain normalisation: tiatoolbox's arithmetic, fitted once per slide, the same in training and
in the features stage, recorded in checkpoints and feature stores, refused on mismatch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA, SVS, run_slide, write_sheet
from scipy import sparse

from hespotex.config import StainConfig, StainNormalisation, parse_config
from hespotex.encoder.build import load_encoder
from hespotex.encoder.encoding import fit_slide_stain, sample_patches
from hespotex.encoder.runners import TorchRunner
from hespotex.encoder.stain import (
    StainProfile,
    StainSetting,
    StainTransform,
    configured_setting,
    fit_profile,
    reference_setting,
)
from hespotex.errors import ConfigError, SlideError, StainMismatchError
from hespotex.io.backends import ArraySlide
from hespotex.io.checksum import file_sha256
from hespotex.io.records import read_spots
from hespotex.io.sections import Section, read_sections_sheet
from hespotex.io.slide import Slide, open_slide
from hespotex.io.stores import StoreKeys, read_feature_store
from hespotex.network.checkpoint import read_checkpoint_meta, save_checkpoint
from hespotex.outputs.per_slide import feature_stain_transform
from hespotex.pipeline.preflight import check_run
from hespotex.stages.decode import run_decode
from hespotex.stages.features import run_features
from hespotex.training.data import encode_sections, load_sections, training_stain
from hespotex.training.fit import train

MACENKO = StainNormalisation.MACENKO
REINHARD = StainNormalisation.REINHARD
VAHADANE = StainNormalisation.VAHADANE
STAIN_STATS = {"architecture": "stain-stats"}


def _c3_crop(top: int = 3000, left: int = 3000, side: int = 2000) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(next((SHARED_DATA / "her2st" / "C3").glob("*.jpg"))) as image:
        return np.asarray(image.crop((left, top, left + side, top + side)).convert("RGB"))


def _cmu1() -> np.ndarray:
    with open_slide(SVS, "svs") as slide:
        return slide.backend.read_region((0, 0), 0, slide.dimensions)


@pytest.mark.parametrize("method", [MACENKO, REINHARD])
def test_the_per_patch_mapping_is_tiatoolbox_normalisers_arithmetic(he_tile, method):
    """With the source measured as tiatoolbox measures it (on the patch itself), mapping a
    patch gives tiatoolbox's own ``transform`` to within one grey level."""
    from tiatoolbox.tools.stainextract import MacenkoExtractor
    from tiatoolbox.tools.stainnorm import StainNormalizer, get_normalizer

    patch = _c3_crop(4000, 4000, 224)
    normaliser = get_normalizer(method.value)
    normaliser.fit(he_tile)
    expected = normaliser.transform(patch.copy())
    if method == REINHARD:
        means, stds = normaliser.get_mean_std(patch.copy())
        source = StainProfile(method=method, lab_mean=means, lab_std=stds)
        target = StainProfile(
            method=method, lab_mean=normaliser.target_means, lab_std=normaliser.target_stds
        )
    else:
        matrix = MacenkoExtractor().get_stain_matrix(patch.copy())
        maxima = np.percentile(StainNormalizer.get_concentrations(patch.copy(), matrix), 99, 0)
        source = StainProfile(
            method=method, stain_matrix=matrix.tolist(), max_concentrations=maxima.tolist()
        )
        target = StainProfile(
            method=method,
            stain_matrix=normaliser.stain_matrix_target.tolist(),
            max_concentrations=normaliser.maxC_target.ravel().tolist(),
        )
    mapped = StainTransform(source, target)(np.stack([patch, patch]))
    assert mapped.shape == (2, 224, 224, 3) and mapped.dtype == np.uint8
    difference = np.abs(mapped[1].astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001
    assert np.array_equal(mapped[0], mapped[1])


def test_a_restained_slide_is_mapped_back_to_its_own_colours():
    """A real H&E region re-stained to CMU-1's colours (Macenko), then normalised back to the
    original's stain, measured on patches of each: Macenko, Reinhard and Vahadane each bring
    it back towards the original, Macenko most."""
    original = np.full((2400, 2400, 3), 243, dtype=np.uint8)
    original[200:2200, 200:2200] = _c3_crop()
    restained = StainTransform(
        fit_profile(MACENKO, [original], "c3"), fit_profile(MACENKO, [_cmu1()], "cmu1")
    )(original[None])[0]
    # Glass has a little optical density too, which the stronger eosin tints faintly.
    assert restained[:100, :100].min() >= 220
    centres = np.array([(x, y) for y in range(400, 2100, 180) for x in range(400, 2100, 180)])
    features = parse_config({"encoder": STAIN_STATS}).features
    before = np.abs(restained.astype(int) - original).mean()
    assert before > 15
    # Measured: the mean difference falls to 0.40 (Macenko), 0.54 (Reinhard), 0.67 (Vahadane).
    for method, most in ((MACENKO, 0.45), (REINHARD, 0.6), (VAHADANE, 0.75)):
        slides = [
            Slide(ArraySlide(image, name), 0.5, "test")
            for image, name in ((original, "original.tif"), (restained, "restained.tif"))
        ]
        target = fit_profile(method, [sample_patches(slides[0], centres, features, 64)], "o")
        setting = StainSetting(method=method, target=target, target_source="the original")
        transform = fit_slide_stain(slides[1], centres, features, setting, 64)
        after = np.abs(transform(restained[None])[0].astype(int) - original).mean()
        assert after < most * before, (method, before, after)


def test_vahadane_and_reference_image_fits_are_reproducible(tmp_path, he_tile):
    from PIL import Image

    reference = tmp_path / "reference.png"
    Image.fromarray(he_tile).save(reference)
    first = reference_setting(VAHADANE, reference)
    assert reference_setting(VAHADANE, reference) == first
    assert first.target_sha256 == file_sha256(reference)
    assert first.target_source == f"reference image {reference}"
    assert first.fingerprint == first.target.fingerprint() and len(first.fingerprint) == 16
    macenko = reference_setting(MACENKO, reference)
    assert not macenko.same_as(first) and macenko.fingerprint != first.fingerprint


def test_a_slide_without_tissue_pixels_cannot_be_measured():
    glass = np.full((1, 64, 224, 224, 3), 246, dtype=np.uint8)
    with pytest.raises(SlideError, match=r"glass\.tif: no tissue pixels .*macenko"):
        fit_profile(MACENKO, [glass], "glass.tif")


@pytest.fixture(scope="module")
def macenko_checkpoint(tmp_path_factory, demo_sections):
    """Trained by `hespotex train` with Macenko normalisation to its training section."""
    config = parse_config(
        {
            "encoder": STAIN_STATS,
            "stain": {"normalisation": "macenko", "fit_patches": 32},
            "training": {"gate_epochs": 10, "epochs": 6, "patience": 3},
        }
    )
    trained = train(read_sections_sheet(demo_sections), "b4-right", config)
    checkpoint = tmp_path_factory.mktemp("macenko") / "macenko.safetensors"
    save_checkpoint(checkpoint, trained)
    return checkpoint


def test_the_checkpoint_stores_its_training_sections_stain_as_the_target(
    macenko_checkpoint, demo_sections
):
    meta = read_checkpoint_meta(macenko_checkpoint)
    stain = meta.stain
    assert stain.method == MACENKO and stain.target_sha256 is None
    assert stain.target_source == "training sections b4-left"
    # Measured on the training section's patches only, as each slide's own stain is.
    sources = read_sections_sheet(demo_sections)
    (left,) = [source for source in sources if source.section_id == "b4-left"]
    config = parse_config({"encoder": STAIN_STATS, "stain": {"fit_patches": 32}})
    section = load_sections([left], 100)[0]
    with open_slide(section.image, "b4-left", section.mpp) as slide:
        patches = sample_patches(slide, section.centres_px, config.features, 32)
    assert stain.target == fit_profile(MACENKO, [patches], "b4-left")
    haematoxylin, eosin = np.array(stain.target.stain_matrix)
    assert np.allclose(np.linalg.norm([haematoxylin, eosin], axis=1), 1, atol=1e-5)
    assert haematoxylin[0] > eosin[0], "haematoxylin absorbs red more than eosin does"
    assert all(value > 0 for value in stain.target.max_concentrations)


@pytest.fixture(scope="module")
def normalised_svs(tmp_path_factory, macenko_checkpoint):
    """CMU-1 through tissue, tiles, features (normalised to the checkpoint's target), graph
    and decode."""
    results = tmp_path_factory.mktemp("normalised")
    config = parse_config(
        {
            "encoder": STAIN_STATS,
            "results": str(results),
            "stain": {"normalisation": "macenko", "fit_patches": 32},
            "decode": {"checkpoint": str(macenko_checkpoint)},
        }
    )
    return config, run_slide(config, outputs=False)


def test_the_features_stage_normalises_as_training_does(normalised_svs, macenko_checkpoint):
    """The same slide and spots encoded by training's loader and by the features stage give
    the same features: one encode loop, one per-slide fit, the checkpoint's target."""
    config, paths = normalised_svs
    meta = read_checkpoint_meta(macenko_checkpoint)
    store = read_feature_store(paths.features)
    assert store.attributes[StoreKeys.STAIN] == meta.stain.model_dump(mode="json")
    measured = StainProfile.model_validate(store.attributes[StoreKeys.STAIN_SOURCE])
    assert measured.method == MACENKO and measured != meta.stain.target
    centres = read_spots(paths.spots)[["x_px", "y_px"]].to_numpy()
    empty = sparse.csr_matrix((len(centres), 1))
    spot_ids = pd.RangeIndex(len(centres))
    section = Section("svs", SVS, None, empty, pd.Index(["g"]), spot_ids, centres)
    runner = TorchRunner(load_encoder(config.encoder), torch.device("cpu"))
    (encoded,) = encode_sections([section], config, runner, meta.stain)
    assert np.allclose(encoded.features, store.features, atol=2e-3, rtol=2e-3)
    unnormalised = parse_config({"encoder": STAIN_STATS})
    (plain,) = encode_sections([section], unnormalised, runner)
    assert not np.allclose(plain.features, store.features, atol=0.05)
    transform = feature_stain_transform(paths.features)
    assert transform.source == measured and transform.target == meta.stain.target


def test_decode_refuses_features_made_with_another_stain_setting(
    normalised_svs, macenko_checkpoint, trained_checkpoint
):
    config, paths = normalised_svs
    assert paths.expression.is_file()
    settings = config.model_dump(mode="json")
    plain = parse_config(
        {**settings, "stain": {"normalisation": "none"}, "decode": {"checkpoint": None}}
    )
    original = paths.features.with_name("normalised.zarr")
    paths.features.rename(original)
    try:
        with open_slide(SVS, "svs") as slide:
            run_features(slide, "svs", plain)
        with pytest.raises(StainMismatchError) as error:
            run_decode("svs", config)
        message = str(error.value)
        assert str(macenko_checkpoint) in message and str(paths.features) in message
        assert "trained on features with macenko to target" in message
        assert "training sections b4-left" in message and "no stain normalisation" in message
        assert "stain.normalisation: macenko and stain.target: checkpoint" in message
        assert feature_stain_transform(paths.features) is None
    finally:
        import shutil

        shutil.rmtree(paths.features)
        original.rename(paths.features)


def test_preflight_refuses_a_stain_setting_the_checkpoint_was_not_trained_with(
    tmp_path, macenko_checkpoint, trained_checkpoint, he_tile
):
    from PIL import Image

    sheet = write_sheet(tmp_path / "s.tsv", [("svs", SVS, None)])
    base = {"samples": str(sheet), "encoder": STAIN_STATS}

    def check(checkpoint, **stain):
        return check_run(
            parse_config({**base, "stain": stain, "decode": {"checkpoint": str(checkpoint)}})
        )

    assert list(check(macenko_checkpoint, normalisation="macenko")) == ["svs"]
    with pytest.raises(ConfigError) as error:
        check(macenko_checkpoint, normalisation="none")
    assert "stain.normalisation is none but checkpoint" in str(error.value)
    assert str(macenko_checkpoint) in str(error.value)
    assert "set stain.normalisation: macenko (target: checkpoint)" in str(error.value)
    with pytest.raises(ConfigError, match="stain.normalisation is reinhard"):
        check(macenko_checkpoint, normalisation="reinhard")
    reference = tmp_path / "reference.png"
    Image.fromarray(he_tile).save(reference)
    with pytest.raises(ConfigError, match=r"stain.target is .*reference\.png.*target: checkpoint"):
        check(macenko_checkpoint, normalisation="macenko", target=str(reference))
    # A checkpoint trained without normalisation refuses normalised features.
    tiny = {"architecture": "vit-tiny-32", "weights": "random"}
    base["encoder"] = tiny
    with pytest.raises(ConfigError, match="trained with no stain normalisation"):
        check(trained_checkpoint, normalisation="macenko")
    assert list(check(trained_checkpoint, normalisation="none")) == ["svs"]


def test_the_checkpoint_target_needs_a_checkpoint_and_a_reference_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="stain.target: checkpoint needs decode.checkpoint"):
        configured_setting(StainConfig(normalisation="macenko"), None, None)
    missing = tmp_path / "missing.png"
    with pytest.raises(ConfigError, match=r"missing\.png does not exist"):
        configured_setting(StainConfig(normalisation="reinhard", target=str(missing)), None, None)
    assert configured_setting(StainConfig(), None, None) == StainSetting()


def test_training_to_a_reference_image_records_the_file(tmp_path, demo_sections, he_tile):
    from PIL import Image

    reference = tmp_path / "reference.png"
    Image.fromarray(he_tile).save(reference)
    config = parse_config(
        {"encoder": STAIN_STATS, "stain": {"normalisation": "reinhard", "target": str(reference)}}
    )
    sections = load_sections(read_sections_sheet(demo_sections), 100)
    setting = training_stain(sections, config)
    assert setting == reference_setting(REINHARD, reference)
    assert setting.target_sha256 == file_sha256(reference)
    # At inference the checkpoint's stored target is used, not fitted again.
    stored = configured_setting(config.stain, setting, tmp_path / "model.safetensors")
    assert stored is setting
