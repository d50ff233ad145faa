"""Stain normalisation with tiatoolbox's normalisers, fitted once per slide, applied to every
patch in the encode loop.

tiatoolbox's ``StainNormalizer.transform`` measures the *source* stain again on every image it
is given. On 224 px patches that is both slow and wrong: a patch of stroma has almost no
haematoxylin, so its "99th percentile of haematoxylin" is tiny and the normaliser would
multiply it up to the target's nuclei. Here the source is measured once per slide, on the
tissue pixels of ``stain.fit_patches`` patches spread over its spots (at the patch
resolution, so the same statistics as the patches it is applied to), and every patch of the
slide is then mapped with that one measurement:

- Macenko and Vahadane: a stain matrix S (H and E optical-density vectors, tiatoolbox's
  extractors) and the 99th percentile of each stain's concentration. A pixel's optical
  density OD = C·S_source, so C = OD·pinv(S_source), scaled by the target's over the source's
  percentiles, and rendered with S_target: OD' = OD·pinv(S_source)·diag(ratio)·S_target, one
  3 × 3 matrix per slide; exactly tiatoolbox's ``transform`` arithmetic, with the source
  fixed.
- Reinhard: mean and spread of each LAB channel (tiatoolbox's ``lab_split``/``merge_back``),
  each patch's channels shifted and scaled from the slide's to the target's.

Statistics are taken over tissue pixels only (tiatoolbox's luminosity tissue mask), not the
glass around them, so a slide's measurement does not depend on how much glass its patches
show. Each measurement is a ``StainProfile``; what a set of features was normalised with (the
method, the target profile and where it came from) is a ``StainSetting``, stored in the
feature store's attributes and in the checkpoint, and compared by ``check_same_stain``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from hespotex.config import StainConfig, StainNormalisation
from hespotex.errors import ConfigError, InputDataError, SlideError, StainMismatchError
from hespotex.io.checksum import file_sha256

# tiatoolbox's extractors' own tissue threshold (LAB lightness after contrast stretching).
LUMINOSITY_THRESHOLD = 0.8
# Pixels a fit looks at, at most: a spread subsample beyond this changes a Macenko matrix by
# < 1e-3 and keeps Vahadane's dictionary learning to a few seconds.
FIT_PIXELS = 1_000_000
# Stored statistics are rounded so that their fingerprint is the same wherever it is read.
DECIMALS = 6
CONCENTRATION_PERCENTILE = 99
# Vahadane's dictionary learning starts from numpy's global random state; fixed, so a slide
# measured twice gives the same matrix (and the same features).
VAHADANE_SEED = 0

Vector3 = tuple[float, float, float]


class StainProfile(BaseModel):
    """One measurement of an image's stain: the stain matrix (H row, then E row, unit
    optical-density vectors) and each stain's 99th-percentile concentration (Macenko,
    Vahadane), or each LAB channel's mean and standard deviation (Reinhard)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: StainNormalisation
    stain_matrix: tuple[Vector3, Vector3] | None = None
    max_concentrations: tuple[float, float] | None = None
    lab_mean: Vector3 | None = None
    lab_std: Vector3 | None = None

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _rounded(values: np.ndarray) -> tuple:
    if values.ndim > 1:
        return tuple(_rounded(row) for row in values)
    return tuple(round(float(value), DECIMALS) for value in values)


class StainSetting(BaseModel):
    """What a set of features was normalised with: the method, the target it was normalised
    to (``None`` without normalisation), where that target came from, and the sha256 of the
    reference image when it was one. Two settings make the same features when method and
    target fingerprint agree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: StainNormalisation = StainNormalisation.NONE
    target: StainProfile | None = None
    target_source: str = "none"
    target_sha256: str | None = None

    @property
    def fingerprint(self) -> str:
        return "none" if self.target is None else self.target.fingerprint()

    def describe(self) -> str:
        if self.method == StainNormalisation.NONE:
            return "no stain normalisation"
        return f"{self.method.value} to target {self.fingerprint} ({self.target_source})"

    def same_as(self, other: StainSetting) -> bool:
        return (self.method, self.fingerprint) == (other.method, other.fingerprint)

    @classmethod
    def from_record(cls, record: object, source: Path | str) -> StainSetting:
        """A setting as stored; no record (a feature store written before stain
        normalisation existed) means none."""
        if record is None:
            return cls()
        try:
            return cls.model_validate(record)
        except ValidationError as error:
            raise InputDataError(
                source, f"unreadable stain normalisation record: {error.errors()[0]['msg']}"
            ) from None


def check_same_stain(
    path: Path | str, made_with: StainSetting, other: str, other_uses: StainSetting, fix: str
) -> None:
    """``path`` (a checkpoint) was trained on features normalised with ``made_with``;
    ``other`` (a feature store, the config) uses ``other_uses``: they must agree."""
    if not made_with.same_as(other_uses):
        raise StainMismatchError(
            path,
            f"trained on features with {made_with.describe()}, but {other} has "
            f"{other_uses.describe()}; {fix}",
        )


def _spread_pixels(images: Sequence[np.ndarray]) -> np.ndarray:
    """All pixels of ``images`` as one (1, N, 3) uint8 image, thinned by an even stride to at
    most ``FIT_PIXELS``."""
    pixels = np.concatenate([np.asarray(image, dtype=np.uint8).reshape(-1, 3) for image in images])
    stride = max(1, math.ceil(len(pixels) / FIT_PIXELS))
    return np.ascontiguousarray(pixels[::stride][None])


def optical_density(pixels: np.ndarray) -> np.ndarray:
    """tiatoolbox's ``rgb2od`` (−ln(I/255), 0 read as 1, floored at 1e-6), without its
    in-place write to the caller's array."""
    from tiatoolbox.utils.transforms import rgb2od

    return rgb2od(np.array(pixels, dtype=np.uint8))


def _stain_matrix(method: StainNormalisation, image: np.ndarray) -> np.ndarray:
    from tiatoolbox.tools.stainextract import MacenkoExtractor, VahadaneExtractor

    if method == StainNormalisation.MACENKO:
        return MacenkoExtractor(luminosity_threshold=LUMINOSITY_THRESHOLD).get_stain_matrix(image)
    state = np.random.get_state()
    np.random.seed(VAHADANE_SEED)
    try:
        extractor = VahadaneExtractor(luminosity_threshold=LUMINOSITY_THRESHOLD)
        return extractor.get_stain_matrix(image)
    finally:
        np.random.set_state(state)


def fit_profile(
    method: StainNormalisation, images: Sequence[np.ndarray], source: Path | str
) -> StainProfile:
    """Measure the stain of the tissue in ``images`` (uint8 RGB arrays of any shape ending in
    3); ``source`` names them in errors."""
    from tiatoolbox.tools.stainnorm import ReinhardNormalizer, StainNormalizer
    from tiatoolbox.utils.misc import get_luminosity_tissue_mask

    image = _spread_pixels(images)
    try:
        tissue = get_luminosity_tissue_mask(image, threshold=LUMINOSITY_THRESHOLD).ravel()
    except ValueError:
        tissue = np.zeros(image.shape[1], dtype=bool)
    if tissue.sum() < 2:
        raise SlideError(source, f"no tissue pixels to measure the stain on ({method.value})")
    if method == StainNormalisation.REINHARD:
        channels = ReinhardNormalizer.lab_split(image[:, tissue])
        means = np.array([channel.mean() for channel in channels])
        stds = np.array([channel.std() for channel in channels])
        if not (np.isfinite(stds).all() and (stds > 0).all()):
            raise SlideError(source, f"the tissue has no colour spread to normalise ({stds})")
        return StainProfile(method=method, lab_mean=_rounded(means), lab_std=_rounded(stds))
    matrix = _stain_matrix(method, image)
    concentrations = StainNormalizer.get_concentrations(image[:, tissue], matrix)
    maxima = np.percentile(concentrations, CONCENTRATION_PERCENTILE, axis=0)
    if not (np.isfinite(matrix).all() and np.isfinite(maxima).all() and (maxima > 0).all()):
        raise SlideError(
            source,
            f"cannot measure two stains on the tissue ({method.value}: stain matrix "
            f"{np.round(matrix, 3).tolist()}, 99th-percentile concentrations "
            f"{np.round(maxima, 3).tolist()})",
        )
    return StainProfile(
        method=method, stain_matrix=_rounded(matrix), max_concentrations=_rounded(maxima)
    )


def read_reference_image(path: Path) -> np.ndarray:
    """A reference image as uint8 RGB; an unreadable one names the config key."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # a reference may be a whole section image
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise ConfigError(
            f"stain.target: cannot read the reference image {path}: {error}"
        ) from None


def reference_setting(method: StainNormalisation, image: Path) -> StainSetting:
    """Normalisation to a reference image's stain, recorded with the file's sha256."""
    if not image.is_file():
        raise ConfigError(f"stain.target: the reference image {image} does not exist")
    return StainSetting(
        method=method,
        target=fit_profile(method, [read_reference_image(image)], image),
        target_source=f"reference image {image}",
        target_sha256=file_sha256(image),
    )


def configured_setting(
    config: StainConfig, trained: StainSetting | None, checkpoint: Path | None
) -> StainSetting:
    """The setting features are made with outside training (features stage, evaluation).
    With a checkpoint, the configured setting must be the one it was trained with, and its
    stored target is used as is (a reference image is not fitted again: Vahadane's fit is
    only reproducible up to its seed, and it would be wasted work); without one, none or a
    reference image."""
    if trained is not None:
        check_stain_config(config, trained, checkpoint)
        return trained
    method = config.normalisation
    if method == StainNormalisation.NONE:
        return StainSetting()
    if config.target_image is None:
        raise ConfigError(
            "stain.target: checkpoint needs decode.checkpoint, whose training sections' stain "
            "is the target; set decode.checkpoint, or give a reference image as stain.target"
        )
    return reference_setting(method, config.target_image)


def check_stain_config(config: StainConfig, trained: StainSetting, checkpoint: Path) -> None:
    """Before any job: the configured normalisation is the one ``checkpoint`` was trained
    with (method, and for a reference image the same file), without fitting anything."""
    method = config.normalisation
    if method != trained.method:
        fix = f"stain.normalisation: {trained.method.value}"
        if trained.target is not None:
            fix += " (target: checkpoint)"
        raise ConfigError(
            f"stain.normalisation is {method.value} but checkpoint {checkpoint} was trained with "
            f"{trained.describe()}; set {fix}, or train a checkpoint with this setting"
        )
    image = config.target_image
    if method == StainNormalisation.NONE or image is None:
        return
    if not image.is_file():
        raise ConfigError(f"stain.target: the reference image {image} does not exist")
    if file_sha256(image) != trained.target_sha256:
        raise ConfigError(
            f"stain.target is {image}, but checkpoint {checkpoint} was trained with "
            f"{trained.describe()}; set stain.target: checkpoint"
        )


class StainTransform:
    """Maps a slide's (B, H, W, 3) uint8 patches from its measured stain (``source``) to the
    ``target``'s; the per-slide work is done here, once."""

    def __init__(self, source: StainProfile, target: StainProfile):
        if source.method != target.method:
            raise ValueError(f"source measured with {source.method}, target with {target.method}")
        self.source = source
        self.target = target
        if source.method == StainNormalisation.REINHARD:
            self._scale = np.array(target.lab_std) / np.array(source.lab_std)
            self._shift = np.array(target.lab_mean) - np.array(source.lab_mean) * self._scale
            return
        source_matrix = np.array(source.stain_matrix, dtype=np.float64)
        ratio = np.array(target.max_concentrations) / np.array(source.max_concentrations)
        target_matrix = np.array(target.stain_matrix, dtype=np.float64)
        self._mixing = (np.linalg.pinv(source_matrix) * ratio) @ target_matrix
        self._mixing = self._mixing.astype(np.float32)
        self._density = optical_density(np.arange(256, dtype=np.uint8)).astype(np.float32)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        if self.source.method == StainNormalisation.REINHARD:
            return self._reinhard(patches)
        density = self._density[patches] @ self._mixing
        # As tiatoolbox renders: 255·exp(−OD), clipped to [0, 255], truncated to uint8. A pixel
        # mapped far lighter than glass overflows to inf, which the clip makes white.
        with np.errstate(over="ignore"):
            rendered = np.exp(np.negative(density, out=density), out=density)
            rendered *= 255
        np.clip(rendered, 0, 255, out=rendered)
        return rendered.astype(np.uint8)

    def _reinhard(self, patches: np.ndarray) -> np.ndarray:
        from tiatoolbox.tools.stainnorm import ReinhardNormalizer

        # cv2's colour conversions take one 2-D image: the batch as a tall one.
        tall = np.ascontiguousarray(patches.reshape(-1, patches.shape[-2], 3))
        channels = ReinhardNormalizer.lab_split(tall)
        mapped = [
            channel * scale + shift
            for channel, scale, shift in zip(channels, self._scale, self._shift, strict=True)
        ]
        return ReinhardNormalizer.merge_back(*mapped).reshape(patches.shape)
