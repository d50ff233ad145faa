"""Resumable training: the state between epochs, bound to what it was trained on.

Every ``resume_every`` epochs the state (tensors and plain values only, so loading it runs no
code) is written beside the checkpoint; rerunning the same command continues from it. A state
of another training (other config, sections or genes: another fingerprint) or an unreadable
one is set aside with a warning and training starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hespotex.config import PipelineConfig
from hespotex.io.atomic import atomic_path
from hespotex.training.data import EncodedSection

logger = logging.getLogger(__name__)


class ResumeFile:
    """The training state between epochs, bound to what it was trained on by a fingerprint;
    tensors and plain values only, so loading it runs no code."""

    def __init__(self, path: Path | None, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            logger.warning("%s is unreadable (%s); starting afresh", self.path, error)
            return None
        if state.get("fingerprint") != self.fingerprint:
            logger.warning(
                "%s belongs to another training (config, sections or genes differ); "
                "starting afresh",
                self.path,
            )
            return None
        logger.info("resuming from %s (%s)", self.path, state["stage"])
        return state

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def fingerprint(config: PipelineConfig, genes: list[str], sections: Sequence[EncodedSection]):
    digest = hashlib.sha256()
    digest.update(config.model_dump_json(include={"training", "graph", "encoder"}).encode())
    digest.update(json.dumps(genes).encode())
    for encoded in sections:
        digest.update(encoded.section_id.encode())
        digest.update(np.ascontiguousarray(encoded.features).tobytes())
    return digest.hexdigest()
