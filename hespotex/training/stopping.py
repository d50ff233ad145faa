"""Early stopping on the validation section: the best epoch so far, and how long ago it was.

The score is the mean gene Pearson on the validation section (never a test section), so the
epoch kept is the one that serves the reported score.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from hespotex.network.streams import ImageStream


@dataclass
class EarlyStopping:
    """The best epoch on the validation section so far, and how long ago it was."""

    patience: int
    best_state: dict | None = None
    best_score: float = -float("inf")
    best_epoch: int = 0
    stale: int = 0

    def update(self, model: ImageStream, epoch: int, score: float) -> bool:
        """Record the epoch's validation score; True when training should stop."""
        if score > self.best_score:
            self.best_state = copy.deepcopy(model.state_dict())
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            return False
        self.stale += 1
        return self.stale >= self.patience
