"""Per-spot quality control, in the tiles stage: each spot's scores, its decision, and the
slide's verdict.

Every spot of the lattice whose patch footprint holds tissue is scored: the share of the
footprint that is tissue, under ink and folded, read from the tissue stage's maps (integral
images, so the cost does not depend on the patch size), and — for the spots still going on —
the blur of its field read at ``tissue.artifacts.blur.mpp`` (Crete's blur effect,
``artifacts.blur_effect``: measured at one physical resolution, it means the same on 20x and
40x scans). Each artefact then does what ``tissue.artifacts`` says: ``drop`` (the spot is
neither encoded nor predicted), ``flag`` (predicted and marked) or ``off``. A spot with too
little tissue is dropped as glass. Spots dropped go to ``spots_dropped.tsv`` with their scores
and reasons; those going on to ``spots.tsv``, with the same columns.

A slide whose tissue spots are, for one artefact, at least ``max_slide_share`` over its
threshold is refused (or warned about, as ``slide_check`` says), with the measured shares: a
map drawn over a slide mostly under ink, folded or out of focus would look fine and not be.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.color import rgb2gray

from hespotex.config import ArtifactAction, ArtifactsConfig, CheckAction
from hespotex.errors import NoTissueError, SlideQualityError
from hespotex.io.patches import iter_patch_batches
from hespotex.io.records import Decision, QcSummary, Reason, SlideMaps
from hespotex.io.slide import Slide
from hespotex.stages.artifacts import blur_effect
from hespotex.units import Microns

logger = logging.getLogger(__name__)

BLUR_BATCH = 64


def footprint_fraction(
    mask: np.ndarray, mask_mpp: float, centres_um: np.ndarray, footprint_um: Microns
) -> np.ndarray:
    """Share of ``mask`` pixels inside the square footprint around each centre; the parts of
    a footprint that fall off the mask count as outside it."""
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    half_px = footprint_um / 2 / mask_mpp
    centre_px = centres_um / mask_mpp
    x0 = np.clip(np.rint(centre_px[:, 0] - half_px), 0, width).astype(np.int64)
    x1 = np.clip(np.rint(centre_px[:, 0] + half_px), 0, width).astype(np.int64)
    y0 = np.clip(np.rint(centre_px[:, 1] - half_px), 0, height).astype(np.int64)
    y1 = np.clip(np.rint(centre_px[:, 1] + half_px), 0, height).astype(np.int64)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    full_area = max(1.0, (2 * half_px) ** 2)
    return np.clip(inside / full_area, 0.0, 1.0)


def score_footprints(
    maps: SlideMaps, centres_um: np.ndarray, footprint_um: Microns, min_tissue: float
) -> pd.DataFrame:
    """Tissue, ink and fold shares of the footprints of the lattice's tissue spots: those with
    ``min_tissue`` tissue, or with some tissue that ink brings up to it (ink may hide what is
    under it)."""
    tissue = footprint_fraction(maps.tissue, maps.mask_mpp, centres_um, footprint_um)
    ink = footprint_fraction(maps.ink > 0, maps.mask_mpp, centres_um, footprint_um)
    candidate = (tissue >= min_tissue) | ((tissue > 0) & (tissue + ink >= min_tissue))
    fold = footprint_fraction(maps.fold, maps.mask_mpp, centres_um[candidate], footprint_um)
    return pd.DataFrame(
        {
            "x_um": centres_um[candidate, 0],
            "y_um": centres_um[candidate, 1],
            "tissue_fraction": tissue[candidate].round(4),
            "ink_fraction": ink[candidate].round(4),
            "fold_fraction": fold.round(4),
        }
    )


def blur_scores(
    slide: Slide, centres_px: np.ndarray, field_um: Microns, mpp: float, workers: int
) -> np.ndarray:
    """Blur effect of each spot's ``field_um`` field read at ``mpp`` µm per pixel."""
    if len(centres_px) == 0:
        return np.zeros(0)
    plan = slide.plan(field_um, mpp)
    batches = iter_patch_batches(slide, centres_px, plan, BLUR_BATCH, workers)
    return np.concatenate([blur_effect(rgb2gray(batch)) for batch in batches])


def _reasons(spots: pd.DataFrame, config: ArtifactsConfig, min_tissue: float) -> dict:
    """Each reason's action and the spots over its threshold."""
    return {
        Reason.INK: (config.ink.action, spots["ink_fraction"] > config.ink.max_fraction),
        Reason.GLASS: (ArtifactAction.DROP, spots["tissue_fraction"] < min_tissue),
        Reason.FOLD: (config.fold.action, spots["fold_fraction"] > config.fold.max_fraction),
        Reason.BLUR: (config.blur.action, spots["blur_score"] > config.blur.max_score),
    }


def decide(spots: pd.DataFrame, config: ArtifactsConfig, min_tissue: float) -> pd.DataFrame:
    """``qc`` (ok, flagged, dropped) and ``qc_reasons`` of every scored spot."""
    reasons = {
        reason: (action, over & (action != ArtifactAction.OFF))
        for reason, (action, over) in _reasons(spots, config, min_tissue).items()
    }
    listed = pd.Series("", index=spots.index)
    for reason, (_, over) in reasons.items():
        listed[over] = listed[over] + ("," + reason.value)
    dropped = np.logical_or.reduce(
        [over for action, over in reasons.values() if action == ArtifactAction.DROP]
    )
    flagged = np.logical_or.reduce(
        [over for action, over in reasons.values() if action == ArtifactAction.FLAG]
    )
    decision = np.select(
        [dropped, flagged], [Decision.DROPPED.value, Decision.FLAGGED.value], Decision.OK.value
    )
    return spots.assign(qc=decision, qc_reasons=listed.str.lstrip(","))


# The artefacts the slide check judges, as the share of tissue spots over threshold; glass is
# not one (a spot mostly glass is just not tissue).
JUDGED = (Reason.INK, Reason.FOLD, Reason.BLUR)


def summarise(spots: pd.DataFrame, config: ArtifactsConfig, min_tissue: float) -> QcSummary:
    reasons = _reasons(spots, config, min_tissue)
    actions = {reason.value: reasons[reason][0].value for reason in JUDGED}
    over, shares = {}, {}
    for reason in JUDGED:
        action, above = reasons[reason]
        if action == ArtifactAction.OFF:
            continue
        measured = int(spots["blur_score"].notna().sum()) if reason == Reason.BLUR else len(spots)
        over[reason.value] = int(above.sum())
        shares[reason.value] = round(over[reason.value] / max(1, measured), 4)
    judged = [reason for reason, share in shares.items() if share >= config.max_slide_share]
    return QcSummary(
        tissue_spots=len(spots),
        kept=int((spots["qc"] != Decision.DROPPED).sum()),
        flagged=int((spots["qc"] == Decision.FLAGGED).sum()),
        dropped=int((spots["qc"] == Decision.DROPPED).sum()),
        over_threshold=over,
        shares=shares,
        actions=actions,
        verdict="fail: " + ", ".join(judged) if judged else "pass",
    )


def _over_threshold(reason: str, config: ArtifactsConfig) -> str:
    if reason == Reason.INK:
        return f"over {config.ink.max_fraction:.0%} ink in their patch"
    if reason == Reason.FOLD:
        return f"over {config.fold.max_fraction:.0%} fold in their patch"
    return f"a blur score over {config.blur.max_score:g}"


SLIDE_WORDING = {Reason.INK: "under ink", Reason.FOLD: "folded", Reason.BLUR: "out of focus"}


def check_slide(summary: QcSummary, config: ArtifactsConfig, path: Path, picture: Path) -> None:
    """Refuse (``error``) or warn about (``warn``) the slide at ``path`` when one artefact
    takes most of it, naming its QC ``picture``; refuse it when no spot is left."""
    failing = [
        reason for reason, share in summary.shares.items() if share >= config.max_slide_share
    ]
    if failing and config.slide_check != CheckAction.OFF:
        measured = "; ".join(
            f"{summary.over_threshold[reason]:,} of {summary.tissue_spots:,} tissue spots "
            f"({summary.shares[reason]:.0%}) have {_over_threshold(reason, config)}"
            for reason in failing
        )
        cause = (
            f"the slide's tissue is mostly {' and '.join(SLIDE_WORDING[r] for r in failing)}: "
            f"{measured} (tissue.artifacts.max_slide_share: {config.max_slide_share:g})"
        )
        if config.slide_check == CheckAction.ERROR:
            raise SlideQualityError(
                path,
                f"{cause}; see {picture}. Set tissue.artifacts.slide_check: warn to predict "
                "its other spots anyway",
            )
        logger.warning("%s: %s (tissue.artifacts.slide_check: warn, so it goes on)", path, cause)
    if summary.tissue_spots and not summary.kept:
        raise NoTissueError(
            path,
            f"no spot is left after quality control: all {summary.tissue_spots:,} tissue "
            f"spots were dropped ({summary.describe()}; see {picture}); tissue.artifacts can "
            "flag instead of drop",
        )
