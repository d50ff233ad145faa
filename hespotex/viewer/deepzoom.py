"""Deep Zoom tiles of any slide the pipeline reads, made on demand.

OpenSlide's ``DeepZoomGenerator`` does the Deep Zoom arithmetic (levels, tiles, overlap, which
slide level each tile is read from). It reads through anything that looks like an OpenSlide
object: ``SlideAsOpenSlide`` gives it the project's own readers, so DICOM, OME-TIFF and
OME-Zarr slides zoom as SVS does. Tiles are cached per slide, a bounded number.
"""

from __future__ import annotations

import io

import numpy as np
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from hespotex.io.slide import Slide
from hespotex.viewer.recent import Recent

TILE_PX = 254
OVERLAP_PX = 1
JPEG_QUALITY = 85


class SlideAsOpenSlide:
    """The part of ``openslide.OpenSlide``'s interface ``DeepZoomGenerator`` uses, over a
    ``Slide``'s backend."""

    def __init__(self, slide: Slide):
        # No vendor properties: no bounds to limit to, OpenSlide's white background.
        self.properties: dict[str, str] = {}
        self._backend = slide.backend
        self.level_dimensions = tuple(tuple(size) for size in slide.backend.level_dimensions)
        self.level_downsamples = tuple(slide.backend.level_downsamples)
        self.level_count = len(self.level_dimensions)
        self.dimensions = self.level_dimensions[0]

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level at most ``downsample`` (OpenSlide's rule)."""
        fitting = [level for level, d in enumerate(self.level_downsamples) if d <= downsample]
        return max(fitting, default=0)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        rgb = np.ascontiguousarray(self._backend.read_region(location, level, size))
        return Image.fromarray(rgb).convert("RGBA")


class TileSource:
    """A slide's Deep Zoom descriptor and JPEG tiles, the last ``cached_tiles`` kept."""

    def __init__(self, slide: Slide, cached_tiles: int = 256):
        # Kept open for as long as the source is used; closed with it by the collector.
        self._slide = slide
        self.generator = DeepZoomGenerator(SlideAsOpenSlide(slide), TILE_PX, OVERLAP_PX)
        # Tiles are made in the requests' threads at once: the slide's readers serve several
        # threads, as the features stage's reading threads use them.
        self._tiles: Recent[bytes] = Recent(cached_tiles)

    def dzi(self) -> str:
        return self.generator.get_dzi("jpeg")

    def has_tile(self, level: int, column: int, row: int) -> bool:
        if not 0 <= level < self.generator.level_count:
            return False
        columns, rows = self.generator.level_tiles[level]
        return 0 <= column < columns and 0 <= row < rows

    def tile(self, level: int, column: int, row: int) -> bytes:
        return self._tiles.get((level, column, row), lambda: self._encode(level, column, row))

    def _encode(self, level: int, column: int, row: int) -> bytes:
        buffer = io.BytesIO()
        self.generator.get_tile(level, (column, row)).save(buffer, "JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()
