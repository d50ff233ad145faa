"""Slide reader backends: one protocol, one class per reader library, one factory.

No single library opens every real slide (``../shared/notes/readers.md``), so
``open_backend`` picks per file: OpenSlide for vendor formats and DICOM series (given as the
folder or any of its files), tifffile for TIFFs OpenSlide refuses (OME-TIFF), zarr for
OME-Zarr (OME-NGFF) folders, Pillow for plain images (HER2ST-style JPEGs), and tiatoolbox for
a TIFF that OpenSlide and tifffile's reader both refuse; tiled TIFFs are decoded tile by tile
through ``hespotex.io.tiledtiff``. ``ArraySlide`` wraps an array (tests, training images).
Locations are level-0 pixels (x, y); regions outside the slide come back as glass.
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

PLAIN_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
TIFF_SUFFIXES = {".tif", ".tiff"}
# What marks a folder as a Zarr store (v3, v2 group, v2 array) when its name does not.
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs")
# OME-NGFF axis units, in µm.
NGFF_UNITS_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4}


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


def tiff_mpp(tiff) -> float | None:
    """µm per pixel of a ``tifffile.TiffFile``: the OME-XML's PhysicalSizeX, else the first
    page's resolution tags."""
    if tiff.is_ome and tiff.ome_metadata:
        root = ElementTree.fromstring(tiff.ome_metadata)
        for element in root.iter():
            if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
                unit = element.attrib.get("PhysicalSizeXUnit", "µm")
                scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
                if scale is not None:
                    return float(element.attrib["PhysicalSizeX"]) * scale
    page = tiff.pages[0]
    resolution = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    if resolution is None or unit is None:
        return None
    numerator, denominator = resolution.value
    unit_name = {2: "inch", 3: "centimeter"}.get(int(unit.value))
    return _mpp_from_resolution_tag(numerator / denominator if denominator else 0, unit_name)


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
        self.metadata_mpp = tiff_mpp(self._tiff)
        self.tiles = TiledTiffLevels.open_if_usable(path, self.level_dimensions)

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


class OmeZarrBackend:
    """An OME-Zarr (OME-NGFF 0.4 on Zarr v2, or 0.5 on Zarr v3) multiscale image, read with
    zarr directly, chunk by chunk: measured faster than tiatoolbox's ``NGFFWSIReader`` on
    the same slide (``benchmarks/RESULTS.md``, "OME-Zarr slides"), which also reads 0.4 only.

    The image is the store's first multiscale (or, for a bioformats2raw layout, that of its
    series ``0``); its datasets are the pyramid levels, largest first. Axes are named
    (``c``, ``y``, ``x``, plus any ``t`` or ``z``, read at index 0); the channel axis must hold
    the three 8-bit RGB channels of a brightfield scan. The mpp is the level-0 dataset's
    ``scale`` on ``x`` (times a multiscale-wide scale where given), in the ``x`` axis' unit.
    """

    name = "ome-zarr"
    tiles = None

    def __init__(self, path: Path):
        import zarr

        self.path = path
        try:
            group = zarr.open_group(str(path), mode="r")
            attributes = dict(group.attrs)
            attributes = attributes.get("ome", attributes)  # 0.5 nests its keys under "ome"
            if "multiscales" not in attributes and "bioformats2raw.layout" in attributes:
                group = group["0"]
                attributes = dict(group.attrs)
                attributes = attributes.get("ome", attributes)
            multiscale = attributes["multiscales"][0]
            self._levels = [group[dataset["path"]] for dataset in multiscale["datasets"]]
        except Exception as error:  # zarr and malformed metadata raise many types
            raise SlideOpenError(path, f"not a readable OME-Zarr image: {error!r}") from None
        axes = [axis if isinstance(axis, str) else axis["name"] for axis in multiscale["axes"]]
        level0 = self._levels[0]
        if not {"x", "y", "c"} <= set(axes) or level0.shape[axes.index("c")] not in (3, 4):
            raise SlideOpenError(
                path, f"not an RGB brightfield image (axes {axes}, shape {level0.shape})"
            )
        if level0.dtype != np.uint8:
            raise SlideOpenError(path, f"not 8-bit RGB ({level0.dtype}): not a brightfield scan")
        self._axes = axes
        x, y = axes.index("x"), axes.index("y")
        self.level_dimensions = [(level.shape[x], level.shape[y]) for level in self._levels]
        width0 = self.level_dimensions[0][0]
        self.level_downsamples = [width0 / dims[0] for dims in self.level_dimensions]
        self.metadata_mpp = self._read_mpp(multiscale, x)

    @staticmethod
    def _read_mpp(multiscale: dict, x: int) -> float | None:
        axis = multiscale["axes"][x]
        unit = NGFF_UNITS_UM.get(axis.get("unit")) if isinstance(axis, dict) else None
        if unit is None:
            return None
        scale = 1.0
        transforms = [
            *multiscale["datasets"][0].get("coordinateTransformations", []),
            *multiscale.get("coordinateTransformations", []),
        ]
        found = False
        for transform in transforms:
            if transform.get("type") == "scale" and "scale" in transform:
                scale *= float(transform["scale"][x])
                found = True
        return scale * unit if found else None

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        array = self._levels[level]

        def copy_inside(view: np.ndarray, left: int, top: int, right: int, bottom: int) -> None:
            spans = {"x": slice(left, right), "y": slice(top, bottom), "c": slice(0, 3)}
            window = tuple(spans.get(axis, 0) for axis in self._axes)
            kept = [axis for axis in self._axes if axis in spans]
            try:
                block = np.asarray(array[window])
            except Exception as error:  # codecs raise many types on damaged chunks
                raise SlideReadError(
                    self.path, f"cannot decode region {location}: {error}"
                ) from None
            view[...] = block.transpose([kept.index(axis) for axis in ("y", "x", "c")])

        x0, y0 = level_origin(location, self.level_downsamples[level])
        return read_window(x0, y0, size, self.level_dimensions[level], copy_inside)

    def close(self) -> None:
        return None


class TiatoolboxBackend:
    """The last resort for a TIFF OpenSlide and tifffile's reader both refuse (e.g. RGB
    stored as three separate planes in strips): tiatoolbox's ``WSIReader``, which may hold
    the whole image in memory (its ``VirtualWSIReader``), so it only ever reads what nothing
    better can. The mpp is tiatoolbox's, else the file's resolution tags."""

    name = "tiatoolbox"
    tiles = None

    def __init__(self, path: Path):
        import tifffile
        from tiatoolbox.wsicore.wsireader import WSIReader

        self.path = path
        try:
            self._reader = WSIReader.open(path)
            info = self._reader.info
        except Exception as error:  # tiatoolbox raises many types for unreadable files
            raise SlideOpenError(path, f"tiatoolbox cannot read it: {error}") from None
        self.level_dimensions = [tuple(map(int, dims)) for dims in info.level_dimensions]
        self.level_downsamples = [float(value) for value in info.level_downsamples]
        if info.mpp is not None:
            self.metadata_mpp = float(info.mpp[0])
        else:
            with tifffile.TiffFile(path) as tiff:
                self.metadata_mpp = tiff_mpp(tiff)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        try:
            region = self._reader.read_rect(
                location, size, resolution=level, units="level", pad_constant_values=BACKGROUND
            )
        except Exception as error:  # tiatoolbox's readers raise many types
            raise SlideReadError(self.path, f"cannot decode region {location}: {error}") from None
        return np.ascontiguousarray(region[..., :3], dtype=np.uint8)

    def close(self) -> None:
        return None


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


def is_zarr_store(path: Path) -> bool:
    """A ``.zarr`` / ``.ome.zarr`` folder, or a folder holding Zarr metadata."""
    return path.is_dir() and (
        path.suffix.lower() == ".zarr" or any((path / marker).is_file() for marker in ZARR_MARKERS)
    )


def open_backend(path: Path) -> SlideBackend:
    """Pick the reader for ``path``; a clear error naming the file if none can read it."""
    import openslide

    if not path.exists():
        raise SlideOpenError(path, "the file does not exist")
    if is_zarr_store(path):
        return OmeZarrBackend(path)
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
    if path.suffix.lower() in TIFF_SUFFIXES or slide_format in {"generic-tiff", None}:
        try:
            return TiffFileBackend(path)
        except SlideOpenError as error:
            tifffile_cause = error.cause
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise SlideOpenError(
                path, f"no reader can open it ({openslide_cause}; {tifffile_cause})"
            )
        try:
            backend = TiatoolboxBackend(path)
        except SlideOpenError as error:
            raise SlideOpenError(
                path, f"no reader can open it ({openslide_cause}; {tifffile_cause}; {error.cause})"
            ) from None
        logger.warning(
            "%s: OpenSlide (%s) and tifffile (%s) refuse it; read through tiatoolbox",
            path,
            openslide_cause,
            tifffile_cause,
        )
        return backend
    raise SlideOpenError(path, f"no reader can open it ({openslide_cause})")
