"""What a checkpoint serves per gene: HESpotEx's image stream, its linear probe, or their mean.

``decode.serve`` names one of them for every gene, or ``best``: per gene, the one with the
highest held-out score the checkpoint carries (``CheckpointMeta.served_models``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hespotex.config import ServedModel


def ensemble(hespotex: np.ndarray, probe: np.ndarray) -> np.ndarray:
    return (hespotex + probe) / 2


def served_prediction(
    hespotex: np.ndarray, probe: np.ndarray, served: Sequence[ServedModel]
) -> np.ndarray:
    """Spots × genes: each gene's column from the model served for it."""
    served = np.asarray([model.value for model in served])
    if served.size != hespotex.shape[1]:
        raise ValueError(f"{served.size} served models for {hespotex.shape[1]} genes")
    combined = np.where(served == ServedModel.PROBE.value, probe, hespotex)
    mixed = served == ServedModel.ENSEMBLE.value
    combined[:, mixed] = ensemble(hespotex[:, mixed], probe[:, mixed])
    return combined


def model_predictions(hespotex: np.ndarray, probe: np.ndarray) -> dict[ServedModel, np.ndarray]:
    return {
        ServedModel.HESPOTEX: hespotex,
        ServedModel.PROBE: probe,
        ServedModel.ENSEMBLE: ensemble(hespotex, probe),
    }
