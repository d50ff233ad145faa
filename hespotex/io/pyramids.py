"""Pyramidal slides written from an RGB array, as scanners and converters lay them out.

Tiled JPEG TIFF pyramids (reduced levels marked ``subfiletype=1``) that OpenSlide reads as
generic TIFF and tifffile as a multi-level series, and OME-Zarr (OME-NGFF 0.4 on Zarr v2 or
0.5 on Zarr v3) multiscale images as bioformats2raw and ome-zarr-py write them: the demo
slides, and the test and benchmark slides built from real H&E pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hespotex.io.atomic import atomic_path


def pyramid_levels(rgb: np.ndarray, smallest_level_px: int) -> list[np.ndarray]:
    """``rgb`` halved again and again until its shorter side is at most ``smallest_level_px``."""
    levels = [rgb]
    while min(levels[-1].shape[:2]) > smallest_level_px:
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
    return levels


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

    levels = pyramid_levels(rgb, smallest_level_px)
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


OMERO_CHANNELS = (("Red", "FF0000"), ("Green", "00FF00"), ("Blue", "0000FF"))


def write_ome_zarr(
    path: Path,
    rgb: np.ndarray,
    mpp: float,
    ngff_version: str = "0.4",
    chunk: int = 512,
    smallest_level_px: int = 512,
) -> None:
    """An OME-Zarr folder: axes (c, y, x) with y and x in micrometres, one dataset per level
    (``0`` the full image) with its ``scale`` transform, and the ``omero`` rendering block
    (which tiatoolbox's reader requires); NGFF 0.4 on Zarr v2, 0.5 on Zarr v3 (its keys under
    ``ome``)."""
    import zarr

    levels = pyramid_levels(rgb, smallest_level_px)
    zarr_format = {"0.4": 2, "0.5": 3}[ngff_version]
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = []
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format)
        for index, level in enumerate(levels):
            level_mpp = mpp * rgb.shape[1] / level.shape[1]
            array = group.create_array(
                str(index),
                shape=(3, *level.shape[:2]),
                chunks=(3, chunk, chunk),
                dtype="uint8",
            )
            array[:] = np.moveaxis(level, -1, 0)
            datasets.append(
                {
                    "path": str(index),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, level_mpp, level_mpp]}
                    ],
                }
            )
        multiscale = {"axes": axes, "datasets": datasets, "name": path.stem}
        omero = {
            "name": path.stem,
            "id": 1,
            "version": ngff_version,
            "channels": [
                {
                    "label": label,
                    "color": color,
                    "active": True,
                    "coefficient": 1.0,
                    "family": "linear",
                    "inverted": False,
                    "window": {"start": 0, "end": 255, "min": 0, "max": 255},
                }
                for label, color in OMERO_CHANNELS
            ],
            "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color"},
        }
        if zarr_format == 2:
            group.attrs.update(
                {"multiscales": [{**multiscale, "version": ngff_version}], "omero": omero}
            )
        else:
            group.attrs.update(
                {"ome": {"version": ngff_version, "multiscales": [multiscale], "omero": omero}}
            )
