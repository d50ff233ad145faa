"""Artefacts planted on real H&E pixels, with the planted masks as ground truth.

The tissue stage's QC is measured against these (``tests/test_artifacts.py``,
``benchmarks/artifacts_qc.py``) and the demo cohort has a slide made with them. Every size is
in µm, so the same artefact is planted at any resolution:

- **ink**: strokes (a ring around the tissue, a curve across it, a dot) of marker colours
  whose optical density is the median of real marker ink on glass in the thumbnails of
  ``../shared/data/artifacts`` (MSKCC, HistoQC, histolab). Ink *adds* its density to what lies
  beneath (Beer–Lambert), so tissue shows through it, as through real marker; the density
  varies smoothly along the stroke (``INK_DENSITY``) and its edges fade over a tenth of its
  width. The truth is where the stroke covers at least half a pixel.
- **blur**: a disc of the image replaced by a Gaussian blur of known σ (µm), its edge blended
  over a tenth of its radius (a field out of focus). The truth is the disc.
- **fold**: the tissue beside a strip laid over it, its density added
  (tissue over tissue) and raised by ``FOLD_EXTRA_DENSITY`` (a folded section is compressed).
  The truth is the strip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from hespotex.config import TissueConfig
from hespotex.stages.tissue import tissue_mask

# Optical density (R, G, B) of marker ink on glass: medians over the real thumbnails.
INK_OD = {
    "green": (1.45, 0.75, 0.75),
    "blue": (2.10, 1.50, 0.45),
    "black": (1.80, 1.95, 1.80),
    "red": (0.22, 1.55, 1.15),
}
# Ink density along a stroke, as a share of INK_OD: marker is laid unevenly.
INK_DENSITY = (0.7, 1.1)
FOLD_EXTRA_DENSITY = 1.2
# Resolution of the tissue mask artefacts are placed by.
TISSUE_MPP = 8.0
GLASS_BRIGHTNESS = 0.85


@dataclass
class PlantedSlide:
    """An RGB image with artefacts planted, and where each one is (full-size masks)."""

    image: np.ndarray
    mpp: float
    ink: dict[str, np.ndarray] = field(default_factory=dict)
    blur: np.ndarray | None = None
    fold: np.ndarray | None = None

    def ink_mask(self) -> np.ndarray:
        mask = np.zeros(self.image.shape[:2], dtype=bool)
        for stroke in self.ink.values():
            mask |= stroke
        return mask


def at_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A full-size planted mask at another image's size (``shape``: rows, columns), each
    pixel the majority of the box it covers: the truth at the tissue stage's overview."""
    image = Image.fromarray((mask * 255).astype(np.uint8))
    return np.asarray(image.resize(shape[::-1], Image.Resampling.BOX)) >= 128


def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(rgb, 1).astype(np.float32) / 255)


def from_density(density: np.ndarray) -> np.ndarray:
    return np.clip(255 * np.exp(-density), 0, 255).round().astype(np.uint8)


def rough_tissue(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """The pipeline's tissue mask of the clean image, at full size (where to plant)."""
    factor = max(1, round(TISSUE_MPP / mpp))
    small = np.asarray(
        Image.fromarray(rgb).resize(
            (max(1, rgb.shape[1] // factor), max(1, rgb.shape[0] // factor)), Image.Resampling.BOX
        )
    )
    mask = tissue_mask(small, mpp * rgb.shape[1] / small.shape[1], TissueConfig())
    full = Image.fromarray(mask).resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST)
    return np.asarray(full)


def stroke_coverage(
    shape: tuple[int, int], points_px: np.ndarray, width_px: float, closed: bool = False
) -> np.ndarray:
    """Coverage (0..1) of a marker stroke along ``points_px`` (x, y), ``width_px`` wide, its
    edge fading over a tenth of its width."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    points = [tuple(point) for point in np.asarray(points_px, dtype=float)]
    if closed:
        points.append(points[0])
    if len(points) == 1:
        x, y = points[0]
        radius = width_px / 2
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    else:
        draw.line(points, fill=255, width=max(1, round(width_px)), joint="curve")
    coverage = np.asarray(canvas, dtype=np.float32) / 255
    return np.clip(ndimage.gaussian_filter(coverage, width_px / 20), 0, 1)


def smooth_field(shape: tuple[int, int], scale_px: float, low: float, high: float, rng):
    """A field varying smoothly between ``low`` and ``high`` over ``scale_px``."""
    coarse = rng.uniform(
        size=(max(2, round(shape[0] / scale_px)), max(2, round(shape[1] / scale_px)))
    )
    field_ = np.asarray(
        Image.fromarray(coarse.astype(np.float32)).resize((shape[1], shape[0]), Image.BICUBIC)
    )
    return low + (high - low) * np.clip(field_, 0, 1)


def plant_ink(slide: PlantedSlide, name: str, colour: str, coverage: np.ndarray, rng) -> None:
    """Add a stroke of ``colour`` with this coverage; recorded as ``slide.ink[name]``."""
    rows, cols = np.nonzero(coverage > 0.01)
    if not len(rows):
        return
    box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    part = coverage[box]
    density = smooth_field(part.shape, 200 / slide.mpp, *INK_DENSITY, rng)
    added = (part * density)[..., None] * np.asarray(INK_OD[colour], dtype=np.float32)
    slide.image[box] = from_density(optical_density(slide.image[box]) + added)
    slide.ink[name] = coverage >= 0.5


def ellipse_points(centre, radii, count: int = 90, wobble: float = 0.0, rng=None) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    scale = 1 + (wobble * rng.standard_normal(count) if wobble else 0)
    scale = ndimage.gaussian_filter1d(np.asarray(scale, dtype=float), 3, mode="wrap")
    return np.stack(
        [
            centre[0] + radii[0] * scale * np.cos(angles),
            centre[1] + radii[1] * scale * np.sin(angles),
        ],
        axis=1,
    )


def random_tissue_point(tissue: np.ndarray, rng, margin_px: int = 0) -> np.ndarray:
    """(x, y) of a random tissue pixel at least ``margin_px`` inside the tissue."""
    inner = ndimage.binary_erosion(tissue, iterations=margin_px) if margin_px else tissue
    rows, cols = np.nonzero(inner if inner.any() else tissue)
    index = rng.integers(len(rows))
    return np.array([cols[index], rows[index]], dtype=float)


def plant_ink_marks(
    slide: PlantedSlide, rng, width_um: float = 600.0, colours=("green", "blue", "black")
) -> None:
    """A ring of ``colours[0]`` around the tissue, a curve of ``colours[1]`` across it and a
    dot of ``colours[2]`` on it, ``width_um`` wide (a marker's ≈ 0.6 mm)."""
    tissue = rough_tissue(slide.image, slide.mpp)
    rows, cols = np.nonzero(tissue)
    shape = tissue.shape
    width_px = width_um / slide.mpp
    centre = np.array([(cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2])
    half = np.array([(cols.max() - cols.min()) / 2, (rows.max() - rows.min()) / 2])
    ring = ellipse_points(centre, half * 1.15 + width_px, wobble=0.03, rng=rng)
    plant_ink(slide, "ring", colours[0], stroke_coverage(shape, ring, width_px, closed=True), rng)
    start = random_tissue_point(tissue, rng)
    end = random_tissue_point(tissue, rng)
    middle = (start + end) / 2 + rng.normal(0, 0.15, 2) * half
    curve = np.array(
        [
            (1 - t) ** 2 * start + 2 * (1 - t) * t * middle + t**2 * end
            for t in np.linspace(0, 1, 40)
        ]
    )
    plant_ink(slide, "stroke", colours[1], stroke_coverage(shape, curve, width_px), rng)
    dot = random_tissue_point(tissue, rng, margin_px=round(width_px))
    plant_ink(slide, "dot", colours[2], stroke_coverage(shape, dot[None], width_px * 1.2), rng)


def plant_blur(slide: PlantedSlide, rng, sigma_um: float, radius_um: float = 1000.0) -> None:
    """A disc of ``radius_um`` over the tissue blurred by a Gaussian of ``sigma_um``."""
    tissue = rough_tissue(slide.image, slide.mpp)
    radius_px = radius_um / slide.mpp
    centre = random_tissue_point(tissue, rng, margin_px=round(radius_px / 2))
    box = around(centre, radius_px + 4 * sigma_um / slide.mpp, tissue.shape)
    rows, cols = np.ogrid[box]
    distance = np.hypot(cols - centre[0], rows - centre[1])
    mix = np.clip((radius_px - distance) / (radius_px / 10), 0, 1)[..., None]
    region = slide.image[box].astype(np.float32)
    blurred = np.stack(
        [ndimage.gaussian_filter(region[..., c], sigma_um / slide.mpp) for c in range(3)], -1
    )
    slide.image[box] = np.clip(mix * blurred + (1 - mix) * region, 0, 255).round().astype(np.uint8)
    slide.blur = np.zeros(tissue.shape, dtype=bool)
    slide.blur[box] = distance <= radius_px


def around(centre: np.ndarray, half_px: float, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The box of ``half_px`` around ``centre`` (x, y), inside ``shape``."""
    top, left = (max(0, round(value - half_px)) for value in centre[::-1])
    bottom = min(shape[0], round(centre[1] + half_px) + 1)
    right = min(shape[1], round(centre[0] + half_px) + 1)
    return np.s_[top:bottom, left:right]


def plant_fold(slide: PlantedSlide, rng, width_um: float = 500.0, length_um: float = 2500.0):
    """A strip of tissue folded over the tissue beside it."""
    tissue = rough_tissue(slide.image, slide.mpp)
    width_px, length_px = width_um / slide.mpp, length_um / slide.mpp
    centre = random_tissue_point(tissue, rng, margin_px=round(width_px))
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    ends = np.stack([centre - direction * length_px / 2, centre + direction * length_px / 2])
    strip = stroke_coverage(tissue.shape, ends, width_px) >= 0.5
    shift = np.round(np.array([-direction[1], direction[0]]) * width_px).astype(int)
    rows, cols = np.nonzero(strip)
    source_rows = np.clip(rows - shift[1], 0, strip.shape[0] - 1)
    source_cols = np.clip(cols - shift[0], 0, strip.shape[1] - 1)
    overlapped = optical_density(slide.image[rows, cols]) + FOLD_EXTRA_DENSITY * optical_density(
        slide.image[source_rows, source_cols]
    )
    slide.image[rows, cols] = from_density(overlapped)
    slide.fold = strip & tissue


def planted_slide(
    rgb: np.ndarray, mpp: float, seed: int, kinds=("ink",), **options
) -> PlantedSlide:
    """A copy of ``rgb`` (at ``mpp`` µm/px) with the artefacts of ``kinds`` (ink, blur,
    fold) planted by ``seed``; ``options``: ``ink_colours``, ``blur_sigma_um``."""
    rng = np.random.default_rng(seed)
    slide = PlantedSlide(np.array(rgb, dtype=np.uint8, copy=True), mpp)
    if "fold" in kinds:
        plant_fold(slide, rng)
    if "blur" in kinds:
        plant_blur(slide, rng, options.get("blur_sigma_um", 4.0))
    if "ink" in kinds:
        plant_ink_marks(slide, rng, colours=options.get("ink_colours", ("green", "blue", "black")))
    return slide
