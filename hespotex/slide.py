"""Reading whole-slide images: one protocol, several backends, one factory.

``open_slide`` picks the backend per file, since no single library opens every real slide
(see ``../shared/notes/readers.md``): OpenSlide for vendor formats and DICOM series (given as
the folder or any of its files), tifffile for TIFFs OpenSlide refuses (OME-TIFF), Pillow for
plain images (HER2ST-style JPEGs). ``ArraySlide`` wraps an array for tests.

Reads are windowed: nothing here loads a whole level unless asked for a region that large.
Regions outside the slide come back white, as a glass slide's background.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from hespotex.errors import (
    InvalidMppError,
    MissingMppError,
    ResolutionTooCoarseError,
    SlideOpenError,
    SlideReadError,
    SlideTooSmallError,
)
from hespotex.units import Mpp, SlidePixels, is_plausible_mpp

if TYPE_CHECKING:
    from hespotex.tiledtiff import TiledTiffLevels

logger = logging.getLogger(__name__)

BACKGROUND = 255
PLAIN_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# An mpp may differ from the target by this factor and still count as "the same resolution":
# scanners report 0.499 or 0.2527 for nominal 0.5 and 0.25.
MPP_TOLERANCE = 1.05


class SlideBackend(Protocol):
    """What a reader library must provide. Locations are level-0 pixels (x, y)."""

    path: Path
    level_dimensions: Sequence[tuple[int, int]]
    level_downsamples: Sequence[float]
    metadata_mpp: float | None
    name: str
    # Set where the file is a tiled TIFF decoded tile by tile (hespotex.tiledtiff), which
    # patches are cropped from directly.
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


# OpenSlide vendors whose files are plain tiled TIFFs, read faster by hespotex.tiledtiff.
TILED_TIFF_VENDORS = {"aperio", "generic-tiff"}


def _read_tiled(tiles, backend, location, level, size) -> np.ndarray:
    downsample = backend.level_downsamples[level]
    x0, y0 = math.floor(location[0] / downsample), math.floor(location[1] / downsample)
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
            from hespotex.tiledtiff import TiledTiffLevels

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
        from hespotex.tiledtiff import TiledTiffLevels

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
        downsample = self.level_downsamples[level]
        x0 = math.floor(location[0] / downsample)
        y0 = math.floor(location[1] / downsample)
        width, height = size
        out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        level_width, level_height = self.level_dimensions[level]
        left, top = max(x0, 0), max(y0, 0)
        right, bottom = min(x0 + width, level_width), min(y0 + height, level_height)
        if right <= left or bottom <= top:
            return out
        try:
            window = array[(*self._leading, slice(top, bottom), slice(left, right), slice(0, 3))]
        except Exception as error:
            raise SlideReadError(self.path, f"cannot decode region {location}: {error}") from None
        out[top - y0 : bottom - y0, left - x0 : right - x0] = np.asarray(window, dtype=np.uint8)
        return out

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
        width, height = size
        x0, y0 = location
        out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        full_height, full_width = self._pixels.shape[:2]
        left, top = max(x0, 0), max(y0, 0)
        right, bottom = min(x0 + width, full_width), min(y0 + height, full_height)
        if right > left and bottom > top:
            out[top - y0 : bottom - y0, left - x0 : right - x0] = self._pixels[
                top:bottom, left:right
            ]
        return out

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class ReadPlan:
    """How to read a square field of ``field_um`` at ``target_mpp``: which level, how many
    level pixels, and the level-0 extent that covers."""

    level: int
    level_px: int
    level0_px: float
    output_px: int


def field_origins(centres_px: np.ndarray, plan: ReadPlan, downsample: float) -> np.ndarray:
    """Top-left corner of the field around each level-0 centre, in read-level pixels: every
    reader rounds here, once, so a field read alone and one cropped from a larger region are
    the same pixels."""
    return np.floor((centres_px - plan.level0_px / 2) / downsample).astype(np.int64)


def level0_location(level_xy, downsample: float) -> tuple[int, int]:
    """The level-0 point that readers map back to exactly ``level_xy`` on the level (rounded
    up, so that dividing by a non-integer downsample does not land one pixel short)."""
    return (math.ceil(level_xy[0] * downsample), math.ceil(level_xy[1] * downsample))


def resample_field(field: np.ndarray, plan: ReadPlan) -> np.ndarray:
    if plan.level_px == plan.output_px:
        return field
    resized = Image.fromarray(field).resize(
        (plan.output_px, plan.output_px), Image.Resampling.BILINEAR, reducing_gap=2.0
    )
    return np.asarray(resized)


class Slide:
    """A slide with its resolution resolved; the object every stage reads through."""

    def __init__(self, backend: SlideBackend, mpp: Mpp, mpp_source: str):
        self.backend = backend
        self.path = backend.path
        self.mpp = mpp
        self.mpp_source = mpp_source

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.backend.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        return tuple(self.backend.level_dimensions[0])

    @property
    def reader(self) -> str:
        return self.backend.name

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.backend.level_downsamples[level]

    def best_level(self, target_mpp: float) -> int:
        """The coarsest level still at least as fine as ``target_mpp`` (read, then shrink);
        level 0 when even that is coarser than the target."""
        best = 0
        for level in range(len(self.backend.level_downsamples)):
            if self.level_mpp(level) <= target_mpp * MPP_TOLERANCE:
                best = level
        return best

    def plan(self, field_um: float, target_mpp: float) -> ReadPlan:
        level = self.best_level(target_mpp)
        level_px = max(1, round(field_um / self.level_mpp(level)))
        return ReadPlan(
            level=level,
            level_px=level_px,
            level0_px=level_px * self.backend.level_downsamples[level],
            output_px=max(1, round(field_um / target_mpp)),
        )

    def read_field(self, center: tuple[SlidePixels, SlidePixels], plan: ReadPlan) -> np.ndarray:
        """The square field centred on a level-0 point, resampled to ``plan.output_px``."""
        downsample = self.backend.level_downsamples[plan.level]
        origin = field_origins(np.array([center], dtype=np.float64), plan, downsample)[0]
        region = self.backend.read_region(
            level0_location(origin, downsample), plan.level, (plan.level_px, plan.level_px)
        )
        return resample_field(region, plan)

    def read_overview(self, target_mpp: float, band_px: int = 2048) -> tuple[np.ndarray, float]:
        """The whole slide at about ``target_mpp``, read in horizontal bands to bound memory.

        Returns the image and its downsample from level 0 (level-0 pixels per image pixel).
        """
        level = self.best_level(target_mpp)
        level_width, level_height = self.backend.level_dimensions[level]
        level_downsample = self.backend.level_downsamples[level]
        shrink = max(1.0, target_mpp / self.level_mpp(level))
        out_width = max(1, round(level_width / shrink))
        out_height = max(1, round(level_height / shrink))
        bands = []
        for top in range(0, level_height, band_px):
            rows = min(band_px, level_height - top)
            band = self.backend.read_region(
                (0, round(top * level_downsample)), level, (level_width, rows)
            )
            band_top = round(top / shrink)
            band_bottom = round((top + rows) / shrink) if top + rows < level_height else out_height
            if band_bottom > band_top:
                bands.append(
                    np.asarray(
                        Image.fromarray(band).resize(
                            (out_width, band_bottom - band_top), Image.Resampling.BOX
                        )
                    )
                )
        overview = np.concatenate(bands, axis=0)
        return overview, level_width * level_downsample / out_width


def check_patch_geometry(slide: Slide, patch_um: float, patch_mpp: float, max_upsampling: float):
    """Refuse slides that cannot yield a meaningful patch: smaller than one patch, or scanned
    so coarsely that patches would be mostly interpolation."""
    width_um, height_um = (side * slide.mpp for side in slide.dimensions)
    if min(width_um, height_um) < patch_um:
        raise SlideTooSmallError(
            slide.path,
            f"the slide ({width_um:.0f} × {height_um:.0f} µm) is smaller than one "
            f"{patch_um:.0f} µm patch",
        )
    if slide.level_mpp(0) > patch_mpp * max_upsampling:
        raise ResolutionTooCoarseError(
            slide.path,
            f"the slide's finest resolution, {slide.level_mpp(0):.3g} µm/px, is more than "
            f"{max_upsampling:g}× coarser than the {patch_mpp:g} µm/px patches asked for "
            "(features.max_upsampling); check its mpp, or scan it at higher magnification",
        )


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


def resolve_mpp(backend: SlideBackend, sheet_mpp: float | None, slide_id: str) -> tuple[Mpp, str]:
    """The sheet's mpp wins over the file's; a slide with neither is an error that says how
    to fix it."""
    if sheet_mpp is not None:
        mpp, source = float(sheet_mpp), "sample sheet"
    elif backend.metadata_mpp is not None:
        mpp, source = float(backend.metadata_mpp), f"slide metadata ({backend.name})"
    else:
        raise MissingMppError(backend.path, slide_id)
    if not is_plausible_mpp(mpp):
        raise InvalidMppError(
            backend.path,
            f"resolution {mpp} µm/px from the {source} is outside (0, 100]; give the right "
            "value in the sample sheet's `mpp` column",
        )
    return Mpp(mpp), source


def open_slide(path: Path | str, slide_id: str, sheet_mpp: float | None = None) -> Slide:
    backend = open_backend(Path(path))
    try:
        mpp, source = resolve_mpp(backend, sheet_mpp, slide_id)
    except Exception:
        backend.close()
        raise
    logger.info(
        "opened %s with %s: %d level(s), level 0 %s px, %.4f µm/px from the %s",
        path,
        backend.name,
        len(backend.level_dimensions),
        backend.level_dimensions[0],
        mpp,
        source,
    )
    return Slide(backend, mpp, source)
