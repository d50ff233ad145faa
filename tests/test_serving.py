"""What a checkpoint serves per gene: the model its held-out scores say, and its columns."""

import numpy as np
import pytest
from conftest import TEST_ENCODER

from hespotex.config import EncoderConfig, ServedModel
from hespotex.encoder.identity import encoder_identity
from hespotex.errors import ConfigError
from hespotex.network.checkpoint import CheckpointMeta
from hespotex.network.serving import served_prediction

HESPOTEX, PROBE, ENSEMBLE = ServedModel.HESPOTEX, ServedModel.PROBE, ServedModel.ENSEMBLE


def meta_with(**scores) -> CheckpointMeta:
    return CheckpointMeta(
        genes=["A", "B", "C", "D"],
        latent_dim=8,
        dropout=0.0,
        graph_k=4,
        encoder=encoder_identity(EncoderConfig.model_validate(TEST_ENCODER)),
        patch_px=224,
        patch_mpp=0.5,
        trained_on=["s"],
        probe_components=4,
        gene_scores=scores,
        gene_sets={"markers": ["B"]},
    )


VALIDATION = {
    "validation_pearson": [0.5, 0.1, None, 0.3],
    "probe_validation_pearson": [0.2, 0.4, None, 0.3],
    "ensemble_validation_pearson": [0.3, 0.3, None, 0.35],
}


def test_best_serves_per_gene_the_model_with_the_highest_validation_score():
    meta = meta_with(**VALIDATION)
    served = meta.served_models(ServedModel.BEST, "c.safetensors")
    assert served == [HESPOTEX, PROBE, HESPOTEX, ENSEMBLE]
    assert meta.served_scores(served) == [0.5, 0.4, None, 0.35]


def test_held_out_sections_scores_outrank_the_validation_sections():
    meta = meta_with(
        **VALIDATION,
        cv_pearson=[0.1, 0.1, 0.2, 0.1],
        probe_cv_pearson=[0.3, 0.0, 0.1, None],
        ensemble_cv_pearson=[0.2, 0.05, None, None],
    )
    served = meta.served_models(ServedModel.BEST, "c.safetensors")
    assert served == [PROBE, HESPOTEX, HESPOTEX, HESPOTEX]
    assert meta.served_scores(served) == [0.3, 0.1, 0.2, 0.1]


def test_a_named_model_is_served_for_every_gene_and_filtered_by_its_own_scores():
    meta = meta_with(**VALIDATION)
    served = meta.served_models(PROBE, "c.safetensors")
    assert served == [PROBE] * 4
    assert meta.genes_kept(0.25, PROBE, "c.safetensors") == ["B", "D"]
    assert meta.genes_kept(0.25, ServedModel.BEST, "c.safetensors") == ["A", "B", "D"]


def test_best_without_scores_serves_hespotex_saying_so(caplog):
    assert meta_with().served_models(ServedModel.BEST, "c.safetensors") == [HESPOTEX] * 4
    assert "c.safetensors carries no per-gene scores" in caplog.text
    with pytest.raises(ConfigError, match="carries no per-gene scores"):
        meta_with().genes_kept(0.2, ServedModel.BEST, "c.safetensors")


def test_served_prediction_takes_each_gene_from_its_model():
    rng = np.random.default_rng(0)
    hespotex, probe = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    combined = served_prediction(hespotex, probe, [HESPOTEX, PROBE, ENSEMBLE, PROBE])
    assert np.array_equal(combined[:, 0], hespotex[:, 0])
    assert np.array_equal(combined[:, [1, 3]], probe[:, [1, 3]])
    assert np.allclose(combined[:, 2], (hespotex[:, 2] + probe[:, 2]) / 2)
    with pytest.raises(ValueError, match="3 served models for 4 genes"):
        served_prediction(hespotex, probe, [HESPOTEX] * 3)


def test_gene_sets_must_name_predicted_genes():
    with pytest.raises(ValueError, match="gene set markers names genes not predicted"):
        CheckpointMeta.model_validate(meta_with().model_dump() | {"gene_sets": {"markers": ["Z"]}})


def test_the_image_streams_linear_path_starts_as_the_probe_on_its_whitened_components():
    """``training.feature_components`` / ``linear_path``: the stream reads the probe's
    components whitened, and its linear path starts at the probe's predictions."""
    import torch

    from hespotex.network.probe import fit_probe
    from hespotex.network.streams import ImageStream, ImageStreamShape

    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 12)) * rng.uniform(0.5, 3, 12) + 4
    expression = features[:, :3] @ rng.normal(size=(3, 5)) + rng.normal(size=(120, 5))
    probe = fit_probe([features[:80]], [expression[:80]], (features[80:], expression[80:]), 6)
    stream = ImageStream(ImageStreamShape(12, 8, 5, input_components=6, linear_path=True))
    stream.start_from_probe(probe)
    inputs = stream.inputs(torch.as_tensor(features, dtype=torch.float32))
    assert np.allclose(inputs[:80].var(dim=0, unbiased=True).numpy(), 1.0, atol=1e-4)
    with torch.no_grad():
        linear = stream.linear_path(inputs).numpy()
    assert np.allclose(linear, probe.predict(features), atol=1e-4)
    assert not any(parameter.requires_grad for parameter in stream.linear_path.parameters())
    assert torch.count_nonzero(stream.gene_head[-1].weight) == 0


def test_a_linear_path_needs_every_component_of_the_probe():
    from hespotex.config import TrainingConfig

    with pytest.raises(ValueError, match="set feature_components to 0 or 256, not 64"):
        TrainingConfig(feature_components=64, linear_path=True)
    assert TrainingConfig(feature_components=64).feature_components == 64
    with pytest.raises(ValueError, match="less than or equal to 256"):
        TrainingConfig(feature_components=300)
