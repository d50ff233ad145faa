"""The per-slide Zarr stores (v3): feature store and spot graph, with their key names.

Readable with plain ``zarr.open_group`` and ``dask.array.from_zarr(path, component=...)``.
Writers fill arrays chunk by chunk, so a slide never needs all of N × D in memory.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from hespotex.errors import InputDataError


class StoreKeys:
    """Array names, then attribute names."""

    FEATURES = "features"
    COORDS = "coords"
    NUCLEUS_COUNTS = "nucleus_counts"
    EDGE_INDEX = "edge_index"
    ENCODER = "encoder"
    NUCLEUS_COUNTER = "nucleus_counter"
    STAIN = "stain_normalisation"
    STAIN_SOURCE = "stain_source"


COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


class FeatureStoreWriter:
    """Creates ``features`` (N × D float16, row-chunked) and ``coords`` (N × 2 level-0 px).
    Rows are compressed and written whole chunks at a time by a thread of its own, so the
    encoder goes on meanwhile; ``append`` waits only when the writer is ``QUEUED_BATCHES``
    behind (``waited`` counts those seconds). ``nucleus_counts`` (N float32), when the
    checkpoint scales by them, is written at the end (4 bytes a spot). A context manager:
    leaving it stops the thread, also on an error."""

    QUEUED_BATCHES = 4

    def __init__(
        self,
        path: Path,
        coords: np.ndarray,
        feature_dim: int,
        chunk_rows: int,
        attributes: dict[str, Any],
    ):
        n_spots = len(coords)
        self.chunk_rows = max(1, min(chunk_rows, n_spots))
        self._group = zarr.open_group(str(path), mode="w", zarr_format=3)
        self._group.attrs.update(attributes)
        self._features = self._group.create_array(
            StoreKeys.FEATURES,
            shape=(n_spots, feature_dim),
            chunks=(self.chunk_rows, feature_dim),
            dtype="float16",
            compressors=COMPRESSOR,
        )
        coord_array = self._group.create_array(
            StoreKeys.COORDS,
            shape=(n_spots, 2),
            chunks=(self.chunk_rows, 2),
            dtype="float64",
            compressors=COMPRESSOR,
        )
        coord_array[:] = coords
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._written = 0
        self.waited = 0.0
        self._error: BaseException | None = None
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(self.QUEUED_BATCHES)
        self._thread = threading.Thread(target=self._write_queued, daemon=True)
        self._thread.start()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop()

    def append(self, rows: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        started = time.perf_counter()
        self._queue.put(rows.astype(np.float16))
        self.waited += time.perf_counter() - started

    def _write_queued(self) -> None:
        while (rows := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking rows so that append never blocks on a dead writer
            try:
                self._buffer.append(rows)
                self._buffered += len(rows)
                while self._buffered >= self.chunk_rows:
                    self._flush(self.chunk_rows)
            except BaseException as error:
                self._error = error

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _flush(self, count: int) -> None:
        block = np.concatenate(self._buffer, axis=0)
        self._features[self._written : self._written + count] = block[:count]
        self._written += count
        rest = block[count:]
        self._buffer = [rest] if len(rest) else []
        self._buffered = len(rest)

    def close(self, nucleus_counts: np.ndarray | None = None) -> int:
        started = time.perf_counter()
        self._stop()
        self.waited += time.perf_counter() - started
        if self._error is not None:
            raise self._error
        if self._buffered:
            self._flush(self._buffered)
        n_spots = self._features.shape[0]
        if self._written != n_spots:
            raise RuntimeError(f"feature store got {self._written} rows for {n_spots} spots")
        if nucleus_counts is not None:
            counts = self._group.create_array(
                StoreKeys.NUCLEUS_COUNTS,
                shape=(n_spots,),
                chunks=(max(1, n_spots),),
                dtype="float32",
                compressors=COMPRESSOR,
            )
            counts[:] = nucleus_counts
        return self._written


@dataclass(frozen=True)
class FeatureStore:
    features: np.ndarray
    coords: np.ndarray
    attributes: dict[str, Any]
    nucleus_counts: np.ndarray | None


def _open_group(path: Path) -> zarr.Group:
    try:
        return zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError, zarr.errors.GroupNotFoundError) as error:
        raise InputDataError(path, f"not a readable Zarr store: {error}") from None


def read_feature_store(path: Path) -> FeatureStore:
    group = _open_group(path)
    try:
        features = np.asarray(group[StoreKeys.FEATURES][:], dtype=np.float32)
        coords = np.asarray(group[StoreKeys.COORDS][:], dtype=np.float64)
    except KeyError as error:
        raise InputDataError(path, f"the feature store lacks the array {error}") from None
    nucleus_counts = (
        np.asarray(group[StoreKeys.NUCLEUS_COUNTS][:], dtype=np.float32)
        if StoreKeys.NUCLEUS_COUNTS in group
        else None
    )
    return FeatureStore(features, coords, dict(group.attrs), nucleus_counts)


def read_coords(path: Path) -> np.ndarray:
    group = _open_group(path)
    try:
        return np.asarray(group[StoreKeys.COORDS][:], dtype=np.float64)
    except KeyError as error:
        raise InputDataError(path, f"the feature store lacks the array {error}") from None


def write_graph_store(path: Path, edge_index: np.ndarray, attributes: dict[str, Any]) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(attributes)
    array = group.create_array(
        StoreKeys.EDGE_INDEX,
        shape=edge_index.shape,
        chunks=(2, max(1, min(edge_index.shape[1], 1 << 20))),
        dtype="int64",
        compressors=COMPRESSOR,
    )
    if edge_index.size:
        array[:] = edge_index


def read_graph_store(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    group = _open_group(path)
    try:
        edge_index = np.asarray(group[StoreKeys.EDGE_INDEX][:], dtype=np.int64)
    except KeyError as error:
        raise InputDataError(path, f"the graph store lacks the array {error}") from None
    return edge_index, dict(group.attrs)
