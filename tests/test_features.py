import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from conftest import SVS, TEST_ENCODER

from hespotex import __version__
from hespotex.config import EncoderConfig, parse_config
from hespotex.encoder.build import load_encoder, read_state_dict
from hespotex.encoder.identity import EncoderIdentity, encoder_identity
from hespotex.errors import ConfigError, InputDataError
from hespotex.io.checksum import file_sha256
from hespotex.io.records import read_spots
from hespotex.io.slide import open_slide
from hespotex.io.stores import StoreKeys, read_feature_store
from hespotex.paths import SlidePaths
from hespotex.stages.features import run_features
from hespotex.stages.tiles import run_tiles
from hespotex.stages.tissue import run_tissue


@pytest.fixture(scope="module")
def svs_features(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    config = parse_config(
        {
            "encoder": TEST_ENCODER,
            "results": str(results),
            "features": {"batch_size": 16, "chunk_rows": 32, "num_workers": 2},
        }
    )
    with open_slide(SVS, "svs") as slide:
        run_tissue(slide, "svs", config)
        run_tiles(slide, "svs", config)
        run_features(slide, "svs", config)
    return SlidePaths(results, "svs")


def test_feature_store_is_zarr_v3_with_rows_coords_and_attributes(svs_features):
    group = zarr.open_group(str(svs_features.features), mode="r")
    assert group.metadata.zarr_format == 3
    features = group[StoreKeys.FEATURES]
    spots = read_spots(svs_features.spots)
    assert features.shape == (len(spots), 512)
    assert features.dtype == np.float16
    assert features.chunks == (32, 512)
    assert features.compressors, "features are compressed"
    assert np.allclose(group[StoreKeys.COORDS][:], spots[["x_px", "y_px"]].to_numpy())
    attributes = dict(group.attrs)
    assert attributes["slide_id"] == "svs"
    assert attributes["mpp"] == pytest.approx(0.499)
    assert attributes["patch_px"] == 224
    assert attributes["patch_um"] == pytest.approx(112.0)
    encoder = EncoderIdentity.model_validate(attributes["encoder"])
    assert encoder == encoder_identity(EncoderConfig.model_validate(TEST_ENCODER))
    assert (encoder.architecture, encoder.weights_sha256) == ("vit-tiny-32", "random-seed-0")
    assert encoder.is_random and encoder.feature_dim == 512
    assert attributes["hespotex_version"] == __version__
    assert attributes[StoreKeys.STAIN] == {
        "method": "none",
        "target": None,
        "target_source": "none",
        "target_sha256": None,
    }
    assert attributes[StoreKeys.STAIN_SOURCE] is None
    assert not svs_features.features.with_name("features.zarr.tmp").exists()


def test_features_are_unit_vectors_that_differ_between_spots_and_load_with_dask(svs_features):
    store = read_feature_store(svs_features.features)
    norms = np.linalg.norm(store.features, axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)
    assert store.features.std(axis=0).mean() > 1e-3
    lazy = da.from_zarr(str(svs_features.features), component=StoreKeys.FEATURES)
    assert lazy.shape == store.features.shape
    assert np.allclose(lazy.mean(axis=0).compute(), store.features.mean(axis=0), atol=1e-3)


def test_features_match_a_direct_encoding_of_the_same_patches(svs_features):
    store = read_feature_store(svs_features.features)
    encoder = load_encoder(EncoderConfig(**TEST_ENCODER))
    with open_slide(SVS, "svs") as slide:
        plan = slide.plan(112.0, 0.5)
        patches = np.stack([slide.read_field(tuple(c), plan) for c in store.coords[:4]])
    with torch.inference_mode():
        direct = encoder(torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255).numpy()
    assert np.abs(direct - store.features[:4]).max() < 2e-3


def test_encoder_weights_load_from_safetensors_and_a_clip_state_dict(tmp_path):
    from safetensors.torch import save_file

    random_encoder = load_encoder(EncoderConfig(**TEST_ENCODER))
    tower = {k: v.contiguous() for k, v in random_encoder.tower.network.state_dict().items()}
    weights = tmp_path / "tower.safetensors"
    save_file(tower, str(weights))
    loaded = load_encoder(EncoderConfig(architecture="vit-tiny-32", weights=str(weights)))
    assert loaded.identity.weights_sha256 == file_sha256(weights)
    assert not loaded.identity.is_random
    clip_style = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(
        {f"visual.{k}": v for k, v in tower.items()} | {"logit_scale": torch.ones(())}, clip_style
    )
    as_clip = load_encoder(EncoderConfig(architecture="vit-tiny-32", weights=str(clip_style)))
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(as_clip(x), random_encoder(x), atol=1e-6)


def test_weights_that_do_not_fit_or_carry_pickled_code_are_refused(tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"layer.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(InputDataError, match="do not fit encoder vit-tiny-32"):
        load_encoder(EncoderConfig(architecture="vit-tiny-32", weights=str(wrong)))
    payload = tmp_path / "payload.pt"
    torch.save({"weights": torch.zeros(1), "hook": _PickledCode()}, payload)
    with pytest.raises(InputDataError, match="not a loadable weights file"):
        read_state_dict(payload)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        read_state_dict(tmp_path / "missing.bin")


class _PickledCode:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(__file__).parent / "pwned",))


def test_weights_free_stain_statistics_encoder_tells_stains_apart(he_tile):
    from hespotex.config import parse_config

    with pytest.raises(ConfigError, match="takes no weights"):
        parse_config({"encoder": {"architecture": "stain-stats", "weights": "random"}})
    encoder = load_encoder(EncoderConfig(architecture="stain-stats"))
    assert encoder.identity.weights_sha256 == "weights-free"
    pink = np.zeros((224, 224, 3), dtype=np.uint8) + np.array([235, 150, 200], dtype=np.uint8)
    purple = np.zeros((224, 224, 3), dtype=np.uint8) + np.array([90, 60, 150], dtype=np.uint8)
    batch = np.stack([pink, purple, he_tile[:224, :224]])
    with torch.inference_mode():
        features = encoder(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255).numpy()
    assert features.shape == (3, 64)
    assert np.isfinite(features).all()
    haematoxylin_mean = features[:, 12]
    assert haematoxylin_mean[1] > haematoxylin_mean[0], "purple carries more haematoxylin"
    assert features[2, 15:18].sum() > features[0, 15:18].sum(), "real tissue varies in stain"
