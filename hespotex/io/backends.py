"""Slide reader backends: one protocol, one class per reader library, one factory.

No single library opens every real slide (``../shared/notes/readers.md``), so
``open_backend`` picks per file: OpenSlide for vendor formats and DICOM series (given as the
folder or any of its files), tifffile for TIFFs OpenSlide refuses (OME-TIFF), Pillow for
plain images (HER2ST-style JPEGs); tiled TIFFs are decoded tile by tile through
``hespotex.io.tiledtiff``. ``ArraySlide`` wraps an array (tests, training images).
Locations are level-0 pixels (x, y); regions outside the slide come back as glass.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from hespotex.errors import SlideOpenError, SlideReadError
from hespotex.io.tiledtiff import TiledTiffLevels
from hespotex.io.windows import BACKGROUND, read_window

PLAIN_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class SlideBackend(Protocol):
    """What a reader library must provide. Locations are level-0 pixels (x, y)."""

    path: Path
    level_dimensions: Sequence[tuple[int, int]]
    level_downsamples: Sequence[float]
    metadata_mpp: float | None
    name: str
    # Set where the file is a tiled TIFF decoded tile by tile, which patches are cropped
    # from directly.
    tiles: TiledTiffLevels | None

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...

    def close(self) -> None: ...


def _mpp_from_resolution_tag(resolution: float | None, unit: str | None) -> float | None:
    """Convert a TIFF/OpenSlide resolution (pixels per unit) into µm per pixel."""
    per_micron = {"centimeter": 1e4, "inch": 25400.0, "micrometer": 1.0}.get(str(unit).lower())
    if not resolution or per_micron is None:
        return None
    return per_micron / resolution


# OpenSlide vendors whose files are plain tiled TIFFs, read faster by hespotex.io.tiledtiff.
TILED_TIFF_VENDORS = {"aperio", "generic-tiff"}


def level_origin(location: tuple[int, int], downsample: float) -> tuple[int, int]:
    """The level pixel a level-0 location falls in (as OpenSlide maps it)."""
    return math.floor(location[0] / downsample), math.floor(location[1] / downsample)


def _read_tiled(tiles, backend, location, level, size) -> np.ndarray:
    x0, y0 = level_origin(location, backend.level_downsamples[level])
    return tiles.read(level, x0, y0, size[0], size[1])


class OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path):
        import openslide

        self.path = path
        self._error = openslide.OpenSlideError
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as error:
            raise SlideOpenError(path, f"OpenSlide cannot read it: {error}") from None
        self.level_dimensions = self._slide.level_dimensions
        self.level_downsamples = self._slide.level_downsamples
        properties = self._slide.properties
        mpp = properties.get(openslide.PROPERTY_NAME_MPP_X)
        if mpp is None:
            resolution = properties.get("tiff.XResolution")
            mpp = _mpp_from_resolution_tag(
                float(resolution) if resolution else None, properties.get("tiff.ResolutionUnit")
            )
        self.metadata_mpp = float(mpp) if mpp is not None else None
        self.tiles = None
        if properties.get(openslide.PROPERTY_NAME_VENDOR) in TILED_TIFF_VENDORS:
            self.tiles = TiledTiffLevels.open_if_usable(path, self.level_dimensions)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        if self.tiles is not None:
            return _read_tiled(self.tiles, self, location, level, size)
        try:
            rgba = self._slide.read_region(location, level, size)
        except self._error as error:
            raise SlideReadError(self.path, f"cannot decode region {location}: {error}") from None
        # OpenSlide returns transparent pixels outside the scanned area: paint them as glass.
        canvas = Image.new("RGB", rgba.size, (BACKGROUND,) * 3)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(canvas)

    def close(self) -> None:
        if self.tiles is not None:
            self.tiles.close()
        self._slide.close()


class TiffFileBackend:
    """TIFFs OpenSlide refuses (OME-TIFF, unusual tags), read tile-wise through tifffile's zarr."""

    name = "tifffile"

    def __init__(self, path: Path):
        import tifffile
        import zarr

        self.path = path
        try:
            self._tiff = tifffile.TiffFile(path)
            series = self._tiff.series[0]
            store = series.aszarr()
            opened = zarr.open(store, mode="r")
        except Exception as error:  # tifffile raises many types for malformed files
            raise SlideOpenError(path, f"tifffile cannot read it: {error}") from None
        if isinstance(opened, zarr.Array):
            self._levels = [opened]
        else:
            self._levels = [opened[str(index)] for index in range(len(series.levels))]
        axes = series.axes
        if not axes.endswith("YXS") or series.shape[-1] not in (3, 4):
            raise SlideOpenError(
                path, f"not an RGB brightfield image (axes {axes}, shape {series.shape})"
            )
        self._leading = (0,) * (len(axes) - 3)
        self.level_dimensions = [(level.shape[-2], level.shape[-3]) for level in self._levels]
        width0 = self.level_dimensions[0][0]
        self.level_downsamples = [width0 / dims[0] for dims in self.level_dimensions]
        self.metadata_mpp = self._read_mpp()
        self.tiles = TiledTiffLevels.open_if_usable(path, self.level_dimensions)

    def _read_mpp(self) -> float | None:
        if self._tiff.is_ome and self._tiff.ome_metadata:
            root = ElementTree.fromstring(self._tiff.ome_metadata)
            for element in root.iter():
                if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
                    unit = element.attrib.get("PhysicalSizeXUnit", "µm")
                    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
                    if scale is not None:
                        return float(element.attrib["PhysicalSizeX"]) * scale
        page = self._tiff.pages[0]
        resolution = page.tags.get("XResolution")
        unit = page.tags.get("ResolutionUnit")
        if resolution is None or unit is None:
            return None
        numerator, denominator = resolution.value
        unit_name = {2: "inch", 3: "centimeter"}.get(int(unit.value))
        return _mpp_from_resolution_tag(numerator / denominator if denominator else 0, unit_name)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        if self.tiles is not None:
            return _read_tiled(self.tiles, self, location, level, size)
        array = self._levels[level]

        def copy_inside(view: np.ndarray, left: int, top: int, right: int, bottom: int) -> None:
            window = (*self._leading, slice(top, bottom), slice(left, right), slice(0, 3))
            try:
                view[...] = np.asarray(array[window], dtype=np.uint8)
            except Exception as error:  # tifffile's codecs raise many types on damaged data
                raise SlideReadError(
                    self.path, f"cannot decode region {location}: {error}"
                ) from None

        x0, y0 = level_origin(location, self.level_downsamples[level])
        return read_window(x0, y0, size, self.level_dimensions[level], copy_inside)

    def close(self) -> None:
        if self.tiles is not None:
            self.tiles.close()
        self._tiff.close()


class ArraySlide:
    """A single-level slide held in memory: plain images and tests."""

    name = "array"
    tiles = None

    def __init__(self, pixels: np.ndarray, path: Path | str = "<array>", mpp: float | None = None):
        if pixels.ndim != 3 or pixels.shape[2] < 3:
            raise SlideOpenError(path, f"not an RGB image (shape {pixels.shape})")
        self.path = Path(path)
        self._pixels = np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)
        self.level_dimensions = [(pixels.shape[1], pixels.shape[0])]
        self.level_downsamples = [1.0]
        self.metadata_mpp = mpp

    @classmethod
    def from_image_file(cls, path: Path) -> ArraySlide:
        Image.MAX_IMAGE_PIXELS = None  # section images (HER2ST ≈ 92 Mpx) exceed Pillow's guard
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as error:
            raise SlideOpenError(path, f"cannot decode the image: {error}") from None
        return cls(pixels, path)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        def copy_inside(view: np.ndarray, left: int, top: int, right: int, bottom: int) -> None:
            view[...] = self._pixels[top:bottom, left:right]

        return read_window(*location, size, self.level_dimensions[0], copy_inside)

    def close(self) -> None:
        return None


def _dicom_file_in(folder: Path) -> Path:
    candidates = sorted(folder.glob("*.dcm"), key=lambda file: file.stat().st_size)
    if not candidates:
        raise SlideOpenError(folder, "a folder was given but it holds no DICOM (.dcm) files")
    return candidates[-1]


def open_backend(path: Path) -> SlideBackend:
    """Pick the reader for ``path``; a clear error naming the file if none can read it."""
    import openslide

    if not path.exists():
        raise SlideOpenError(path, "the file does not exist")
    if path.is_dir():
        path = _dicom_file_in(path)
    if path.stat().st_size == 0:
        raise SlideOpenError(path, "the file is empty")
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return ArraySlide.from_image_file(path)
    try:
        slide_format = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as error:
        slide_format, openslide_cause = None, str(error)
    else:
        openslide_cause = "format not recognised"
    if slide_format is not None:
        try:
            return OpenSlideBackend(path)
        except SlideOpenError as error:
            openslide_cause = error.cause
    if path.suffix.lower() in {".tif", ".tiff"} or slide_format in {"generic-tiff", None}:
        try:
            return TiffFileBackend(path)
        except SlideOpenError as error:
            raise SlideOpenError(
                path, f"no reader can open it ({openslide_cause}; {error.cause})"
            ) from None
    raise SlideOpenError(path, f"no reader can open it ({openslide_cause})")
