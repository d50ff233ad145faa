"""Regions of tiled TIFF pyramids decoded tile by tile, at the speed of the JPEG decoder.

OpenSlide composites every region through premultiplied ARGB, which costs about three times
the decoding itself; for the formats that are plain tiled TIFFs (Aperio SVS, generic pyramidal
TIFF, OME-TIFF) the tiles can be read with ``os.pread`` and decoded by libjpeg-turbo through
imagecodecs (the GIL released) with the colour spaces tifffile would use, giving the same
pixels. Tiles are decoded straight into a fixed-size LRU cache, so a tile shared by
neighbouring patches and regions is decoded once, and patches are copied out of it. Copies run
outside the cache's lock (the slot pinned meanwhile), so reader threads copy in parallel.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import imagecodecs
import numpy as np

from hespotex.errors import SlideReadError
from hespotex.io.windows import BACKGROUND, fill_window

TILE_CACHE_BYTES = 256 << 20
_PLANAR_CONTIG = 1
_JPEG = 7
_RGB_PHOTOMETRICS = {2, 6}  # RGB, YCbCr


class TiledTiffLevels:
    """The pyramid levels of a tiled 8-bit RGB TIFF, read by region in level pixels."""

    def __init__(self, path: Path, cache_bytes: int = TILE_CACHE_BYTES):
        import tifffile
        from tifffile.tifffile import jpeg_decode_colorspace

        self.path = Path(path)
        self._tiff = tifffile.TiffFile(self.path)
        try:
            self._check_layout()
        except BaseException:
            self._tiff.close()
            raise
        self.pages = [level.keyframe for level in self._tiff.series[0].levels]
        self.level_dimensions = [(page.imagewidth, page.imagelength) for page in self.pages]
        self._descriptor = os.open(self.path, os.O_RDONLY)
        base = self.pages[0]
        tile_shape = (base.tilelength, base.tilewidth, 3)
        slots = max(1, cache_bytes // int(np.prod(tile_shape)))
        self._slots = np.empty((slots, *tile_shape), dtype=np.uint8)
        self._slot_of: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._free_slots = list(range(slots))
        self._pins = [0] * slots
        # JPEG tiles are decoded by imagecodecs directly, with the colour spaces tifffile
        # would use (Aperio's RGB JPEG, YCbCr elsewhere); other codecs through tifffile.
        self._jpeg_colorspaces = [
            jpeg_decode_colorspace(
                page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
            )
            if page.compression == _JPEG
            else None
            for page in self.pages
        ]
        self._decoding: dict[tuple[int, int], threading.Event] = {}
        self._lock = threading.Lock()

    def _check_layout(self) -> None:
        series = self._tiff.series[0]
        if len(series.shape) != 3 or not series.axes.endswith("YXS"):
            raise ValueError(f"not a single RGB image (axes {series.axes})")
        for page in (level.keyframe for level in series.levels):
            if not (
                page.is_tiled
                and page.planarconfig == _PLANAR_CONTIG
                and page.samplesperpixel == 3
                and page.bitspersample == 8
                and int(page.photometric) in _RGB_PHOTOMETRICS
            ):
                raise ValueError("a level is not tiled 8-bit RGB")

    @classmethod
    def open_if_usable(
        cls, path: Path, level_dimensions: list[tuple[int, int]] | None = None
    ) -> TiledTiffLevels | None:
        """The reader, or None when the file is not a tiled RGB TIFF whose levels are
        ``level_dimensions`` (as another reader sees them)."""
        try:
            levels = cls(path)
        except Exception:  # tifffile raises many types; any means "not for this reader"
            return None
        expected = [tuple(dims) for dims in level_dimensions] if level_dimensions else None
        if expected is not None and levels.level_dimensions != expected:
            levels.close()
            return None
        return levels

    def _copy_from_tile(
        self, level: int, index: int, destination: np.ndarray, rows: slice, columns: slice
    ) -> None:
        """``destination[...] = tile[rows, columns]``, decoding the tile only if no cache slot
        holds it. A slot is pinned while it is decoded into or copied from, so no other
        thread evicts it meanwhile; the copies themselves run outside the lock (a copy under
        it made every reader thread wait for every other's: more threads read slower)."""
        key = (level, index)
        while True:
            with self._lock:
                slot = self._slot_of.get(key)
                if slot is not None:
                    self._slot_of.move_to_end(key)
                    self._pins[slot] += 1
                    break
                decoding = self._decoding.get(key)
                if decoding is None:
                    self._decoding[key] = threading.Event()
                    break
            decoding.wait()  # another thread decodes this tile: take its result
        if slot is not None:
            self._copy_pinned(slot, destination, rows, columns)
            return
        page = self.pages[level]
        try:
            if (page.tilelength, page.tilewidth, 3) == self._slots.shape[1:]:
                with self._lock:
                    slot = self._claim_slot()
            if slot is None:  # another tile shape, or every slot is in use
                destination[...] = self._decode(level, index)[rows, columns]
                return
            try:
                # Straight into the slot: slots are allocated once, so no fresh memory (a page
                # fault per 4 KiB) and no copy per decoded tile.
                self._decode(level, index, out=self._slots[slot])
            except BaseException:
                with self._lock:
                    self._pins[slot] -= 1
                    self._free_slots.append(slot)
                raise
            with self._lock:
                self._slot_of[key] = slot
            self._copy_pinned(slot, destination, rows, columns)
        finally:
            with self._lock:
                self._decoding.pop(key).set()

    def _claim_slot(self) -> int | None:
        """A free slot, else the least recently used one nobody has pinned, pinned for the
        caller (under the lock); None when every slot is pinned."""
        slot = self._free_slots.pop() if self._free_slots else None
        if slot is None:
            for key, candidate in self._slot_of.items():
                if self._pins[candidate] == 0:
                    del self._slot_of[key]
                    slot = candidate
                    break
        if slot is not None:
            self._pins[slot] += 1
        return slot

    def _copy_pinned(self, slot: int, destination: np.ndarray, rows: slice, columns: slice) -> None:
        try:
            destination[...] = self._slots[slot][rows, columns]
        finally:
            with self._lock:
                self._pins[slot] -= 1

    def _decode(self, level: int, index: int, out: np.ndarray | None = None) -> np.ndarray:
        page = self.pages[level]
        shape = (page.tilelength, page.tilewidth, 3)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:  # a sparse tile: nothing was scanned there
            out.fill(BACKGROUND)
            return out
        try:
            data = os.pread(self._descriptor, count, offset)
            if self._jpeg_colorspaces[level] is not None:
                colorspace, outcolorspace = self._jpeg_colorspaces[level]
                imagecodecs.jpeg_decode(
                    data,
                    tables=page.jpegtables,
                    colorspace=colorspace,
                    outcolorspace=outcolorspace,
                    shape=shape[:2],
                    out=out,
                )
            else:
                out[...] = page.decode(data, index, jpegtables=page.jpegtables)[0].reshape(shape)
        except Exception as error:  # codecs raise many types on damaged tiles
            raise SlideReadError(
                self.path, f"cannot decode tile {index} of level {level}: {error}"
            ) from None
        return out

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 from level pixel (x0, y0); outside the image is glass."""
        out = np.empty((height, width, 3), dtype=np.uint8)
        self.read_into(out, level, x0, y0)
        return out

    def read_into(self, out: np.ndarray, level: int, x0: int, y0: int) -> None:
        """Fill ``out`` (height, width, 3) from level pixel (x0, y0), straight from the
        decoded tiles."""
        page = self.pages[level]
        tile_width, tile_length = page.tilewidth, page.tilelength
        across = -(-self.level_dimensions[level][0] // tile_width)

        def copy_inside(view: np.ndarray, left: int, top: int, right: int, bottom: int) -> None:
            for row in range(top // tile_length, (bottom - 1) // tile_length + 1):
                for column in range(left // tile_width, (right - 1) // tile_width + 1):
                    tile_x, tile_y = column * tile_width, row * tile_length
                    x_from, x_to = max(left, tile_x), min(right, tile_x + tile_width)
                    y_from, y_to = max(top, tile_y), min(bottom, tile_y + tile_length)
                    self._copy_from_tile(
                        level,
                        row * across + column,
                        view[y_from - top : y_to - top, x_from - left : x_to - left],
                        slice(y_from - tile_y, y_to - tile_y),
                        slice(x_from - tile_x, x_to - tile_x),
                    )

        fill_window(out, x0, y0, self.level_dimensions[level], copy_inside)

    def close(self) -> None:
        os.close(self._descriptor)
        self._tiff.close()
