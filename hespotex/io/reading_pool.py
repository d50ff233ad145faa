"""Patch reading in worker processes, past the GIL, into a ring of shared-memory batch slots.

Reader threads share one interpreter: the JPEG decoder releases the GIL, but the Python work
around each patch (planning, cropping, copying out of the tile cache) does not, and on a GPU
node it competes with the thread feeding the GPU. Here each reader is a process with its own
slide handle and tile cache; it reads a whole batch straight into a slot of shared memory,
and the main process hands that slot to the encoder without a copy, then gives it back. The
processes live for the whole features job, across its slides (each opens a slide once, on
its first batch of it), so their start-up is paid once per job.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from hespotex.errors import SlideReadError
from hespotex.io.geometry import ReadPlan, field_origins
from hespotex.io.patches import read_batch_into
from hespotex.io.slide import Slide

logger = logging.getLogger(__name__)

# How long the main process waits for a batch before checking that the pool's processes still live.
POLL_SECONDS = 5.0


@dataclass(frozen=True)
class SlideSource:
    """What a reader process needs to open the slide the main process opened (``name`` only
    names it in messages; the resolved mpp is passed on)."""

    path: Path
    name: str
    mpp: float

    @classmethod
    def of(cls, slide: Slide, name: str) -> SlideSource:
        return cls(Path(slide.path), name, float(slide.mpp))


def _reader_loop(slot_names, slot_shape, tasks, results) -> None:
    """A reader process: batches of patch origins in, patches into shared slots out."""
    from hespotex.io.slide import open_slide

    memories = [SharedMemory(name=name) for name in slot_names]
    slots = [np.ndarray(slot_shape, dtype=np.uint8, buffer=memory.buf) for memory in memories]
    source, slide = None, None
    try:
        while (task := tasks.get()) is not None:
            slot, index, task_source, origins, plan, max_region_px, transform = task
            try:
                if task_source != source:
                    if slide is not None:
                        slide.close()
                        slide = None
                    source = task_source
                    slide = open_slide(source.path, source.name, source.mpp)
                patches = slots[slot][: len(origins)]
                read_batch_into(patches, slide, origins, plan, max_region_px)
                if transform is not None:
                    patches[...] = transform(patches)
                results.put((slot, index, None))
            except Exception as error:  # sent back and raised in the main process
                cause = getattr(error, "cause", None) or f"{type(error).__name__}: {error}"
                results.put((slot, index, cause))
    finally:
        if slide is not None:
            slide.close()
        for memory in memories:
            memory.close()


class ReadingPool:
    """``workers`` reading processes and ``workers + 2`` batch slots of ``batch_size`` patches
    of ``patch_px``² pixels; a context manager that stops them and frees the memory."""

    def __init__(self, workers: int, batch_size: int, patch_px: int):
        context = multiprocessing.get_context("spawn")
        self.slot_shape = (batch_size, patch_px, patch_px, 3)
        size = int(np.prod(self.slot_shape))
        self._memories = []
        try:
            for _ in range(workers + 2):
                self._memories.append(SharedMemory(create=True, size=size))
        except OSError:
            self._free_memory()
            raise
        self.slots = [
            np.ndarray(self.slot_shape, dtype=np.uint8, buffer=memory.buf)
            for memory in self._memories
        ]
        self._tasks = context.Queue()
        self._results = context.Queue()
        names = [memory.name for memory in self._memories]
        self._processes = [
            context.Process(
                target=_reader_loop,
                args=(names, self.slot_shape, self._tasks, self._results),
                daemon=True,
            )
            for _ in range(workers)
        ]
        for process in self._processes:
            process.start()

    def __enter__(self) -> ReadingPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def batches(
        self,
        slide: Slide,
        name: str,
        centres_px: np.ndarray,
        plan: ReadPlan,
        batch_size: int,
        max_region_px: int,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Iterator[np.ndarray]:
        """(B, H, W, 3) uint8 batches in spot order, each mapped by ``transform`` (pickled
        to the processes) when given, each a view into a slot that is valid until the next
        one is asked for."""
        source = SlideSource.of(slide, name)
        origins = field_origins(centres_px, plan)
        if batch_size > self.slot_shape[0] or plan.output_px != self.slot_shape[1]:
            raise ValueError(f"batches of {batch_size} × {plan.output_px} px exceed the slots")
        starts = list(range(0, len(origins), batch_size))
        free = deque(range(len(self.slots)))
        ready: dict[int, tuple[int, str | None]] = {}
        submitted = received = 0
        try:
            for index, start in enumerate(starts):
                while free and submitted < len(starts):
                    chunk = origins[starts[submitted] : starts[submitted] + batch_size]
                    task = (
                        free.popleft(),
                        submitted,
                        source,
                        chunk,
                        plan,
                        max_region_px,
                        transform,
                    )
                    self._tasks.put(task)
                    submitted += 1
                while index not in ready:
                    slot, done, cause = self._next_result()
                    received += 1
                    ready[done] = (slot, cause)
                slot, cause = ready.pop(index)
                if cause is not None:
                    raise SlideReadError(source.path, cause)
                yield self.slots[slot][: min(batch_size, len(origins) - start)]
                free.append(slot)
        finally:
            # Batches still being read (an error, or the consumer stopped early) must land
            # before their slots serve the next slide; a dead reader has said so already.
            with contextlib.suppress(RuntimeError):
                for _ in range(submitted - received):
                    self._next_result()

    def _next_result(self) -> tuple[int, int, str | None]:
        while True:
            try:
                return self._results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                dead = [process.exitcode for process in self._processes if not process.is_alive()]
                if dead:
                    raise RuntimeError(f"a reader process died (exit codes {dead})") from None

    def close(self) -> None:
        for _ in self._processes:
            self._tasks.put(None)
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        self._free_memory()

    def _free_memory(self) -> None:
        self.slots = []
        for memory in self._memories:
            with contextlib.suppress(OSError):
                memory.close()
                memory.unlink()
        self._memories = []
