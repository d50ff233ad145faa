"""Pyramidal TIFFs written from an RGB array, as scanners lay them out.

Tiled JPEG pyramids (reduced levels marked ``subfiletype=1``) that OpenSlide reads as
generic TIFF and tifffile as a multi-level series: the demo slides, and the test and
benchmark slides built from real H&E pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hespotex.io.atomic import atomic_path


def write_pyramid_tiff(
    path: Path,
    rgb: np.ndarray,
    mpp: float | None,
    resolution_unit: str = "CENTIMETER",
    tile: int = 256,
    smallest_level_px: int = 512,
) -> None:
    """A tiled JPEG TIFF pyramid OpenSlide reads as generic-tiff; resolution tags give the
    mpp (omitted when ``mpp`` is None)."""
    import tifffile

    levels = [rgb]
    while min(levels[-1].shape[:2]) > smallest_level_px:
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
    per_unit = {"CENTIMETER": 1e4, "INCH": 25400.0}[resolution_unit]
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as writer:
        for index, level in enumerate(levels):
            resolution = {}
            if mpp is not None:
                level_mpp = mpp * rgb.shape[1] / level.shape[1]
                resolution = {
                    "resolution": (per_unit / level_mpp, per_unit / level_mpp),
                    "resolutionunit": resolution_unit,
                }
            writer.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": 90},
                subfiletype=1 if index else 0,
                **resolution,
            )
