"""Artefacts on the tissue stage's overview: marker ink by colour, and folds.

Ink is found *before* tissue is thresholded, so it neither counts as tissue nor pulls the
saturation threshold up. Colour is read in optical density (OD = −ln(I/255) per channel,
Beer–Lambert: stains and ink add), as the pixel's chromaticity — where its OD lies in the
plane of (R − G)/ΣOD against (B − G)/ΣOD — and its total density ΣOD:

- H&E tissue of every real scan here (the four HER2ST sections, CMU-1, OS-1, tiatoolbox's
  tile: 160,000 tissue pixels at 8 µm/px) lies in a narrow band of that plane, from eosin to
  haematoxylin: centre ``HE_CENTRE``, along ``HE_AXIS``; 99.8 % of its pixels lie within
  0.12 of the band's axis.
- Real marker ink (the MSKCC, HistoQC and histolab thumbnails of ``../shared/data/artifacts``)
  lies off it: green beyond the haematoxylin end and above the band, blue below it, red above
  the eosin end, black near the neutral point and dark. ``benchmarks/RESULTS.md`` ("Artefacts")
  has the measurements the bounds below were set from.

Colour is read on the OD averaged over ``INK_SMOOTHING_UM`` (tissue's colour varies from cell
to cell, a marker's does not). Each colour is found with two sets of bounds: pixels within the
strict ones seed it, and pixels within the looser ones join when they touch a seed
(hysteresis: ink over tissue has a colour between the ink's and the tissue's — OD adds — and
its edges fade). Pieces are then closed, pinholes filled and
pieces smaller than ``tissue.artifacts.ink.min_area_um2`` dropped. Red marker has the colour of
blood and of intense eosin, so haemorrhage is found as red ink (``colours`` can leave red
out); black takes in dark debris and glass edges, which are as neutral and dark.

Tissue under ink stays tissue where it can be told apart, by either of two signs. Where
tissue borders the ink on both sides, along a row or a column, across at most
``INK_BRIDGE_UM`` — a stroke drawn over a section, not a ring drawn on the glass around it,
whose outer side is glass — the tissue goes on beneath it. And ink adds its
own OD vector to the tissue's, so what remains of a pixel's OD once the ink's direction is
taken out is the tissue beneath it; real ink on glass leaves up to ≈ 0.25 of OD and ≈ 8 % of
its density that way, so only a clear remainder counts. Under black, colour tells nothing.

Folds — tissue lying over itself — are much denser than the tissue around them:
``tissue.artifacts.fold.darkness`` times the mean density of the ordinary tissue within
``neighbourhood_um`` (ordinary: below ``FOLD_MIN_OVER_MEDIAN`` times the slide's median tissue
density, so that a wide fold does not raise its own reference), and at least
``FOLD_MIN_OVER_MEDIAN`` times that median.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import closing, disk, remove_small_holes, remove_small_objects

from hespotex.config import FoldConfig, InkColour, InkConfig
from hespotex.io.records import INK_CODES

# The H&E band of the chromaticity plane: centre, unit axis (towards eosin) and unit normal.
HE_CENTRE = np.array([-0.093, -0.184], dtype=np.float32)
HE_AXIS = np.array([-0.974, -0.228], dtype=np.float32)
HE_NORMAL = np.array([0.228, -0.974], dtype=np.float32)


@dataclass(frozen=True)
class ColourBounds:
    """Where one ink colour lies: a pixel is that colour when every bound given holds.
    ``along``/``across`` are its position on and distance from the H&E band, ``density``
    its ΣOD, ``brightness`` its brightest channel (0..1) and ``chroma`` its distance from the
    neutral point. ``neutral_or_across_below`` is black's either-or: the pixel is near the
    neutral point or above the band."""

    min_density: float = 0.0
    max_brightness: float = 1.0
    min_along: float = -np.inf
    max_along: float = np.inf
    min_across: float = -np.inf
    max_across: float = np.inf
    neutral_or_across_below: tuple[float, float] | None = None

    def holds(self, colour: Chromaticity) -> np.ndarray:
        inside = (
            (colour.density >= self.min_density)
            & (colour.brightness < self.max_brightness)
            & (colour.along > self.min_along)
            & (colour.along < self.max_along)
            & (colour.across > self.min_across)
            & (colour.across < self.max_across)
        )
        if self.neutral_or_across_below is not None:
            radius, across = self.neutral_or_across_below
            inside &= (colour.chroma < radius) | (colour.across < across)
        return inside


@dataclass(frozen=True)
class InkBounds:
    """Where one colour of ink lies: a pixel within any of ``seeds`` seeds it, a pixel within
    any of ``grows`` joins a piece that holds a seed."""

    seeds: tuple[ColourBounds, ...]
    grows: tuple[ColourBounds, ...]


def _within_any(bounds: tuple[ColourBounds, ...], colour: Chromaticity) -> np.ndarray:
    inside = bounds[0].holds(colour)
    for more in bounds[1:]:
        inside |= more.holds(colour)
    return inside


# Brightest channel below this: an OD over 1.9 in every channel, twice a dense tissue's
# brightest (red) channel, so past a fold's.
BLACK_OVER_TISSUE_MAX_BRIGHTNESS = 0.15
# Set on the real ink and H&E named in the module's docstring.
INK_BOUNDS: dict[InkColour, InkBounds] = {
    InkColour.GREEN: InkBounds(
        seeds=(ColourBounds(min_density=0.6, max_along=-0.20, max_across=-0.04),),
        grows=(ColourBounds(min_density=0.4, max_along=-0.17, max_across=-0.02),),
    ),
    InkColour.BLUE: InkBounds(
        seeds=(ColourBounds(min_density=0.6, max_along=0.05, min_across=0.08),),
        grows=(ColourBounds(min_density=0.4, max_along=0.15, min_across=0.055),),
    ),
    InkColour.RED: InkBounds(
        # Red on glass; and red over tissue, eosin-coloured but denser than tissue gets.
        seeds=(
            ColourBounds(min_density=1.5, min_along=0.15, max_across=-0.10),
            ColourBounds(min_density=3.5, min_along=0.10, max_across=-0.05),
        ),
        grows=(ColourBounds(min_density=1.0, min_along=0.10, max_across=-0.05),),
    ),
    InkColour.BLACK: InkBounds(
        # Dark and near neutral; or far darker than tissue gets, even folded (over dense
        # tissue black marker takes the tissue's colour).
        seeds=(
            ColourBounds(max_brightness=0.27, neutral_or_across_below=(0.10, -0.05)),
            ColourBounds(max_brightness=BLACK_OVER_TISSUE_MAX_BRIGHTNESS),
        ),
        # Dark; and grey marker strokes (a worn black pen) and dark edges, near neutral.
        grows=(
            ColourBounds(max_brightness=BLACK_OVER_TISSUE_MAX_BRIGHTNESS + 0.05),
            ColourBounds(max_brightness=0.35, neutral_or_across_below=(0.12, -0.03)),
            ColourBounds(max_brightness=0.6, neutral_or_across_below=(0.06, -np.inf)),
        ),
    ),
}
# The OD direction of each marker colour on glass (the real thumbnails' medians).
INK_OD_DIRECTION = {
    InkColour.GREEN: (0.79, 0.43, 0.43),
    InkColour.BLUE: (0.80, 0.57, 0.16),
    InkColour.RED: (0.10, 0.80, 0.59),
}
# What remains of an inked pixel's OD once its ink's direction is removed: tissue beneath it
# from this length and this share of the pixel's density (ink on glass, 99th percentiles on
# the real thumbnails: 0.24 and 0.12).
TISSUE_UNDER_INK_MIN_OD = 0.35
TISSUE_UNDER_INK_MIN_SHARE = 0.15
# Ink with tissue on both sides across at most this distance lies over tissue.
INK_BRIDGE_UM = 1000.0
# A pixel is stained (a candidate for ink or fold) from this ΣOD; glass is ≈ 0.1.
STAINED_MIN_DENSITY = 0.25
INK_CLOSING_UM = 16.0
INK_HALO_UM = 16.0
# Colour is read on OD averaged over this many µm square: tissue's colour varies from cell to
# cell, a marker's does not, and ink over dense tissue is told apart only on average.
INK_SMOOTHING_UM = 24.0
INK_PINHOLE_UM2 = 2000.0
BLACK_HOLE_MAX_BRIGHTNESS = 0.35
FOLD_MIN_OVER_MEDIAN = 1.5
FOLD_INK_MARGIN_UM = 128.0
# The re-blur of the blur effect, pixels at ``tissue.artifacts.blur.mpp`` (scikit-image's
# default, 11 µm at 1 µm/px: a few nuclei).
BLUR_FILTER_PX = 11
BLUR_EPSILON = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Chromaticity:
    """Per pixel of an RGB image: OD, its total, chromaticity on the H&E band's axes, distance
    from the neutral point, and brightness."""

    optical_density: np.ndarray
    density: np.ndarray
    along: np.ndarray
    across: np.ndarray
    chroma: np.ndarray
    brightness: np.ndarray

    @classmethod
    def of(cls, rgb: np.ndarray, smoothing_px: int = 1) -> Chromaticity:
        """With ``smoothing_px`` > 1, of the OD averaged over that many pixels square."""
        density_rgb = -np.log(np.maximum(rgb, 1).astype(np.float32) / 255)
        if smoothing_px > 1:
            density_rgb = ndimage.uniform_filter(density_rgb, (smoothing_px, smoothing_px, 1))
        density = density_rgb.sum(axis=-1)
        total = np.maximum(density, 1e-6)[..., None]
        plane = (
            np.stack(
                [
                    (density_rgb[..., 0] - density_rgb[..., 1]),
                    (density_rgb[..., 2] - density_rgb[..., 1]),
                ],
                axis=-1,
            )
            / total
        )
        offset = plane - HE_CENTRE
        return cls(
            optical_density=density_rgb,
            density=density,
            along=offset @ HE_AXIS,
            across=offset @ HE_NORMAL,
            chroma=np.linalg.norm(plane, axis=-1),
            brightness=rgb.max(axis=-1).astype(np.float32) / 255,
        )


def _grow(seeds: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The connected pieces of ``candidates | seeds`` that hold a seed."""
    labels, _ = ndimage.label(candidates | seeds)
    kept = np.unique(labels[seeds])
    return np.isin(labels, kept[kept > 0])


def ink_labels(rgb: np.ndarray, mask_mpp: float, config: InkConfig) -> np.ndarray:
    """Label image of marker ink (``INK_CODES``; 0 where there is none)."""
    labels = np.zeros(rgb.shape[:2], dtype=np.uint8)
    if config.action == "off":
        return labels
    colour = Chromaticity.of(rgb, max(1, round(INK_SMOOTHING_UM / mask_mpp)))
    min_pixels = round(config.min_area_um2 / mask_mpp**2)
    radius = max(1, round(INK_CLOSING_UM / mask_mpp))
    for ink in config.colours:
        bounds = INK_BOUNDS[ink]
        seeds = remove_small_objects(_within_any(bounds.seeds, colour), max_size=min_pixels // 4)
        if not seeds.any():
            continue
        found = closing(_grow(seeds, _within_any(bounds.grows, colour)), disk(radius))
        found = remove_small_holes(found, max_size=round(INK_PINHOLE_UM2 / mask_mpp**2))
        found = remove_small_objects(found, max_size=min_pixels)
        labels[found & (labels == 0)] = INK_CODES[ink]
    if InkColour.BLACK in config.colours:
        labels[dark_holes(labels > 0, colour.brightness)] = INK_CODES[InkColour.BLACK]
    return labels


def dark_holes(found: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    """The holes of the ink found darker on the whole than black's looser bound: black marker
    over dense tissue takes the tissue's colour and leaves a hole in the ink, but stays as
    dark (tissue a ring encloses is much brighter)."""
    holes, count = ndimage.label(ndimage.binary_fill_holes(found) & ~found)
    if count == 0:
        return np.zeros(found.shape, dtype=bool)
    median = ndimage.median(brightness, holes, index=np.arange(1, count + 1))
    dark = np.concatenate([[False], np.asarray(median) < BLACK_HOLE_MAX_BRIGHTNESS])
    return dark[holes]


def _nearest_visible(visible: np.ndarray, axis: int, forward: bool) -> np.ndarray:
    """Index along ``axis`` of the nearest visible pixel before each pixel (``forward``:
    after it); -1 or the axis length where there is none."""
    length = visible.shape[axis]
    positions = np.arange(length).reshape([-1 if index == axis else 1 for index in range(2)])
    if forward:
        flipped = np.flip(np.where(visible, length - 1 - positions, -1), axis)
        return length - 1 - np.flip(np.maximum.accumulate(flipped, axis=axis), axis)
    return np.maximum.accumulate(np.where(visible, positions, -1), axis=axis)


def ink_cover(labels: np.ndarray, mask_mpp: float) -> np.ndarray:
    """The ink and its faint halo (``INK_HALO_UM`` around it): coloured like neither glass
    nor tissue, so left out of the tissue threshold."""
    inked = labels > 0
    radius = round(INK_HALO_UM / mask_mpp)
    return ndimage.binary_dilation(inked, disk(radius)) if radius > 0 and inked.any() else inked


def near_ink(covered: np.ndarray, mask_mpp: float) -> np.ndarray:
    """The ink's cover and ``FOLD_INK_MARGIN_UM`` around it: a marker's soft edge darkens the
    tissue beside it, which is not a fold."""
    radius = round(FOLD_INK_MARGIN_UM / mask_mpp)
    if radius == 0 or not covered.any():
        return covered
    return ndimage.binary_dilation(covered, disk(radius))


def bridged_by_tissue(covered: np.ndarray, visible_tissue: np.ndarray, mask_mpp: float):
    """Covered pixels with tissue on both sides of the ink, across at most ``INK_BRIDGE_UM``,
    along the rows or the columns: a stroke drawn over a section, not a ring on the glass
    around it (one side of a ring is glass)."""
    visible = ~covered
    span = INK_BRIDGE_UM / mask_mpp
    bridged = np.zeros(covered.shape, dtype=bool)
    for axis in (0, 1):
        before = _nearest_visible(visible, axis, forward=False)
        after = _nearest_visible(visible, axis, forward=True)
        length = covered.shape[axis]
        ends_tissue = []
        for index in (before, after):
            inside = (index >= 0) & (index < length)
            clipped = np.clip(index, 0, length - 1)
            ends_tissue.append(inside & np.take_along_axis(visible_tissue, clipped, axis=axis))
        bridged |= ends_tissue[0] & ends_tissue[1] & (after - before <= span)
    return bridged & ~visible


def tissue_under_ink(
    rgb: np.ndarray,
    labels: np.ndarray,
    covered: np.ndarray,
    visible_tissue: np.ndarray,
    mask_mpp: float,
) -> np.ndarray:
    """Covered pixels (``ink_cover``) under which tissue can be told apart: bridged by
    tissue, or inked with a clear remainder of OD once their ink's direction is taken out
    (smoothed over 3 × 3 pixels against noise)."""
    inked = labels > 0
    # Bridging is decided along rows and columns: a closing joins the stripes it leaves.
    within = (
        ndimage.binary_closing(
            bridged_by_tissue(covered, visible_tissue, mask_mpp), disk(2), border_value=0
        )
        & covered
    )
    density = -np.log(np.maximum(rgb, 1).astype(np.float32) / 255)
    remainder = np.zeros(labels.shape, dtype=np.float32)
    for ink, direction in INK_OD_DIRECTION.items():
        this_ink = labels == INK_CODES[ink]
        if not this_ink.any():
            continue
        unit = np.asarray(direction, dtype=np.float32)
        unit /= np.linalg.norm(unit)
        pixels = density[this_ink]
        rest = pixels - np.outer(pixels @ unit, unit)
        remainder[this_ink] = np.linalg.norm(rest, axis=1)
    remainder = ndimage.median_filter(remainder, size=3)
    seen = (remainder >= TISSUE_UNDER_INK_MIN_OD) & (
        remainder >= TISSUE_UNDER_INK_MIN_SHARE * density.sum(axis=-1)
    )
    return within | (inked & (labels != INK_CODES[InkColour.BLACK]) & seen)


def fold_mask(
    rgb: np.ndarray, tissue: np.ndarray, mask_mpp: float, config: FoldConfig, min_area_um2: float
) -> np.ndarray:
    """Tissue much denser than the ordinary tissue around it, and than the slide's median."""
    if config.action == "off" or not tissue.any():
        return np.zeros(tissue.shape, dtype=bool)
    density = Chromaticity.of(rgb).density
    median = float(np.median(density[tissue]))
    dark = density >= FOLD_MIN_OVER_MEDIAN * median
    ordinary = tissue & ~dark
    window = max(3, round(config.neighbourhood_um / mask_mpp))
    weight = ndimage.uniform_filter(ordinary.astype(np.float32), window)
    around = ndimage.uniform_filter(np.where(ordinary, density, 0), window)
    local = np.where(weight > 1e-3, around / np.maximum(weight, 1e-6), median)
    fold = ndimage.binary_opening(tissue & dark & (density >= config.darkness * local))
    return remove_small_objects(fold, max_size=round(min_area_um2 / mask_mpp**2))


def ink_colour_areas(ink: np.ndarray, mask_mpp: float) -> dict[str, float]:
    """Area of each ink colour found, mm²."""
    pixel_mm2 = mask_mpp * mask_mpp / 1e6
    return {
        colour.value: round(float((ink == code).sum()) * pixel_mm2, 4)
        for colour, code in INK_CODES.items()
        if (ink == code).any()
    }


def _sobel(images: np.ndarray, axis: int) -> np.ndarray:
    """``skimage.filters.sobel(image, axis=...)`` of each image of a batch (k, h, w)."""
    across = 3 - axis
    edges = ndimage.correlate1d(images, [1.0, 0.0, -1.0], axis=axis, mode="reflect")
    return ndimage.correlate1d(edges, [0.25, 0.5, 0.25], axis=across, mode="reflect")


def blur_effect(gray: np.ndarray, h_size: int = BLUR_FILTER_PX) -> np.ndarray:
    """Crete et al.'s blur effect of each of a batch of grey images (k, h, w) in 0..1, as
    ``skimage.measure.blur_effect`` computes it for one (the larger of the two axes' scores),
    without its per-image Python loop: how little of each image's edge strength a further
    ``h_size``-pixel box blur takes away — 0 sharp, 1 fully blurred."""
    images = np.asarray(gray, dtype=np.float64)
    inner = (slice(None), slice(2, images.shape[1] - 1), slice(2, images.shape[2] - 1))
    scores = []
    for axis in (1, 2):
        reblurred = ndimage.uniform_filter1d(images, h_size, axis=axis)
        sharp = np.maximum(BLUR_EPSILON, np.abs(_sobel(images, axis)))
        blurred = np.maximum(BLUR_EPSILON, np.abs(_sobel(reblurred, axis)))
        variation = sharp[inner].sum(axis=(1, 2))
        lost = np.maximum(0, sharp - blurred)[inner].sum(axis=(1, 2))
        scores.append(np.abs(variation - lost) / variation)
    return np.maximum(*scores)
