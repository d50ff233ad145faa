"""Does a slide's tissue look like H&E? Optical-density analysis of the tissue stage's overview.

HESpotEx reads expression from haematoxylin and eosin. An IHC slide (DAB brown on a
haematoxylin counterstain) or another stain yields a confident-looking map all the same, so
the tissue stage measures the colour of the tissue pixels of its low-resolution overview and
says what the slide looks like:

- fluorescence: the median pixel is dark (no bright glass);
- IHC (DAB): a share of the stained tissue is DAB brown. In optical density (OD = −ln(I/255)
  per channel) haematoxylin (0.65, 0.70, 0.29) and eosin (0.07, 0.99, 0.11) absorb green at
  least as much as blue, DAB (0.27, 0.57, 0.78) absorbs blue most and red least (Ruifrok &
  Johnston's vectors, scikit-image's ``rgb2hed``): a pixel whose OD rises from red to green
  to blue is DAB coloured;
- other: much of the stained tissue absorbs red well beyond green (blue, green and cyan dyes:
  alcian blue, trichrome's light green) or little of the tissue is stained at all;
- H&E otherwise.

scikit-image's ``rgb2hed`` itself was measured and not used: with its fixed vectors the eosin
of real scans (CMU-1, tiatoolbox's tile) loads on its DAB channel, making 49–63 % of their
pixels "DAB-dominant" against 70 % on the real IHC image; the blue-against-green comparison
separates them completely. The thresholds were set on the real images in ``../shared/data``
(``benchmarks/RESULTS.md``, "Stain check"): the H&E sections and slides have under 0.05 %
DAB-coloured and at most 1.1 % other-coloured stained pixels, the IHC image 85 % DAB-coloured.
An IHC slide with almost no DAB (a negative stain) is colour-wise a haematoxylin-only slide and
passes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np

# Brightfield glass is bright; a slide whose typical pixel is this dark is fluorescence (or
# a failed scan), and thresholding its saturation would call the black background tissue.
BRIGHTFIELD_MIN_MEDIAN_VALUE = 0.35
# A pixel is stained when its optical density vector is at least this long (glass ≈ 0.05).
STAINED_MIN_OD = 0.15
# Red absorbed beyond green by this share of the pixel's OD length: a blue or green dye.
OTHER_RED_OVER_GREEN = 0.1
# Verdict thresholds, as shares of the stained tissue pixels (or of the tissue pixels).
IHC_MIN_DAB_FRACTION = 0.10
OTHER_MIN_FRACTION = 0.25
MIN_STAINED_FRACTION = 0.25
# Fewer tissue pixels than this in the overview: too little to judge.
MIN_PIXELS = 50


class StainVerdict(StrEnum):
    HE = "H&E"
    IHC = "IHC (DAB)"
    FLUORESCENCE = "fluorescence"
    OTHER = "other"
    TOO_LITTLE_TISSUE = "too little tissue to judge"


@dataclass(frozen=True)
class StainMeasurement:
    """The numbers behind a verdict; stored in ``tissue.json`` and ``qc.json``."""

    verdict: StainVerdict
    median_brightness: float
    tissue_pixels: int
    stained_fraction: float
    dab_fraction: float
    other_fraction: float
    mean_optical_density: tuple[float, float, float]

    def describe(self) -> str:
        return (
            f"{self.dab_fraction:.1%} of the stained tissue is DAB brown (IHC from "
            f"{IHC_MIN_DAB_FRACTION:.0%}), {self.other_fraction:.1%} another dye's colour "
            f"(other from {OTHER_MIN_FRACTION:.0%}), {self.stained_fraction:.1%} of the tissue "
            f"stained (other below {MIN_STAINED_FRACTION:.0%}), mean optical density (R, G, B) "
            f"{tuple(round(value, 3) for value in self.mean_optical_density)}, median "
            f"brightness {self.median_brightness:.2f}, over {self.tissue_pixels} tissue pixels"
        )

    def as_record(self) -> dict:
        """As JSON stores it (so a record read back compares equal)."""
        record = asdict(self)
        return {
            **record,
            "verdict": self.verdict.value,
            "mean_optical_density": list(self.mean_optical_density),
        }


def median_brightness(rgb: np.ndarray) -> float:
    """The median of each pixel's brightest channel (HSV value), 0..1."""
    return float(np.median(rgb.max(axis=-1))) / 255


def measure_stain(rgb: np.ndarray, mask: np.ndarray) -> StainMeasurement:
    """The stain verdict on the tissue pixels (``mask``) of an RGB overview."""
    brightness = median_brightness(rgb)
    pixels = rgb[mask].astype(np.float64)
    density = -np.log(np.maximum(pixels, 1) / 255)
    length = np.linalg.norm(density, axis=1)
    stained = density[length >= STAINED_MIN_OD]
    stained_length = length[length >= STAINED_MIN_OD]
    red, green, blue = stained.T if len(stained) else np.zeros((3, 0))
    dab = float(np.mean((blue > green) & (green >= red))) if len(stained) else 0.0
    other = (
        float(np.mean(red - green > OTHER_RED_OVER_GREEN * stained_length)) if len(stained) else 0.0
    )
    stained_fraction = len(stained) / max(1, len(pixels))
    if brightness < BRIGHTFIELD_MIN_MEDIAN_VALUE:
        verdict = StainVerdict.FLUORESCENCE
    elif len(pixels) < MIN_PIXELS:
        verdict = StainVerdict.TOO_LITTLE_TISSUE
    elif dab >= IHC_MIN_DAB_FRACTION:
        verdict = StainVerdict.IHC
    elif other >= OTHER_MIN_FRACTION or stained_fraction < MIN_STAINED_FRACTION:
        verdict = StainVerdict.OTHER
    else:
        verdict = StainVerdict.HE
    mean_density = stained.mean(axis=0) if len(stained) else np.zeros(3)
    return StainMeasurement(
        verdict=verdict,
        median_brightness=round(brightness, 4),
        tissue_pixels=len(pixels),
        stained_fraction=round(stained_fraction, 4),
        dab_fraction=round(dab, 4),
        other_fraction=round(other, 4),
        mean_optical_density=tuple(round(float(value), 4) for value in mean_density),
    )
