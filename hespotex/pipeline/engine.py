"""Stages run over many slides in one process: what each workflow job does.

A job takes a shard of the sample sheet and runs each slide through its stages in order
(``stage_table.JOBS``: prepare = tissue, tiles; features; predict = graph, decode, outputs), so the
imports, CUDA and the encoder load once per job, not once per slide. Slides fail alone: a slide
whose stage raises is recorded (the ERROR line in ``logs/{stage}/{slide}.log``, a line in the
shard's failure log, its row in the shard's manifest) and the job goes on with the next one. A
stage whose record (``qc/stages/{stage}.json``, ``io.stage_records``) is newer than its inputs
is not redone, so a rerun after a crash, a kill or a failed slide does only what is missing.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import pandas as pd

from hespotex.config import PipelineConfig, SampleRow
from hespotex.errors import HespotexError, SlideError
from hespotex.io.atomic import write_tsv
from hespotex.io.slide import Slide, open_slide
from hespotex.io.stage_records import stage_record
from hespotex.outputs.qc import write_slide_qc
from hespotex.paths import LogPaths, SlidePaths
from hespotex.pipeline import LOG_FORMAT
from hespotex.stage_table import STAGES

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"
    # An earlier stage has not succeeded (it failed, in this job or an earlier one): not
    # this job's failure, and retried once that stage is.
    WAITING = "waiting"


@dataclass(frozen=True)
class SlideResult:
    slide_id: str
    status: Outcome
    stage: str = ""
    cause: str = ""


class SharedWork:
    """What the job's slides share, made on first use: the encoder and the decoder, loaded
    once, and the reading pool's processes when configured. A context manager that
    stops them."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self._runner = None
        self._pool = None
        self._pool_failed = False
        self._decoder = None
        # Seconds spent making them, not yet reported in a stage record.
        self.unreported_setup = 0.0

    def __enter__(self) -> SharedWork:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._pool is not None:
            self._pool.close()

    def runner(self):
        if self._runner is None:
            from hespotex.encoder.runners import build_runner

            started = time.perf_counter()
            self._runner = build_runner(self.config)
            seconds = time.perf_counter() - started
            self.unreported_setup += seconds
            logger.info("encoder ready in %.1f s", seconds)
        return self._runner

    def reading_pool(self):
        features = self.config.features
        wanted = features.reading == "processes" and features.num_workers
        if self._pool is None and wanted and not self._pool_failed:
            from hespotex.io.reading_pool import ReadingPool

            started = time.perf_counter()
            try:
                self._pool = ReadingPool(
                    features.num_workers, features.batch_size, features.patch_px
                )
            except OSError as error:
                # A node with little shared memory (/dev/shm) still runs, more slowly.
                logger.warning("no reading pool processes (%s): reading with threads", error)
                self._pool_failed = True
            self.unreported_setup += time.perf_counter() - started
        return self._pool

    def decoder(self):
        if self._decoder is None:
            from hespotex.stages.decode import load_decoder

            self._decoder = load_decoder(self.config)
        return self._decoder

    def take_setup(self) -> float:
        """The setup seconds not reported yet, for the stage record of the slide that paid
        them (the job's first to need the encoder)."""
        seconds, self.unreported_setup = self.unreported_setup, 0.0
        return round(seconds, 3)


def scratch_root(config: PipelineConfig) -> Path:
    """Where remote slides are fetched: ``remote.scratch``, else $TMPDIR (node-local on most
    clusters), else /tmp."""
    return Path(config.remote.scratch or tempfile.gettempdir())


class SlideTask:
    """One slide's stages in this job: its sample row and its slide, opened once on first use
    and closed when the slide is done. A remote slide is fetched into the scratch folder when
    first opened and removed when closed, so a job holds one fetched slide at a time."""

    def __init__(self, sample: SampleRow, config: PipelineConfig, shared: SharedWork):
        self.sample = sample
        self.slide_id = sample.slide_id
        self.config = config
        self.shared = shared
        self._slide: Slide | None = None
        self._fetched: Path | None = None

    def _local_path(self) -> Path:
        if not self.sample.is_remote:
            return self.sample.slide_path
        from hespotex.io.remote import fetch_slide

        root = scratch_root(self.config)
        root.mkdir(parents=True, exist_ok=True)
        # A folder of this process's own (mode 0700, a name no one can guess beforehand).
        self._fetched = Path(tempfile.mkdtemp(prefix=f"hespotex-{self.slide_id}-", dir=root))
        return fetch_slide(
            self.sample.path,
            self._fetched,
            self.config.remote,
            self.sample.size_bytes,
            self.sample.md5,
        )

    def slide(self) -> Slide:
        if self._slide is None:
            local = self._local_path()
            self._slide = open_slide(local, self.slide_id, self.sample.mpp, self.sample.path)
        return self._slide

    def named(self, error: HespotexError) -> HespotexError:
        """``error`` naming the slide as the sheet does: a fetched slide's URL, not the
        scratch file it was read from."""
        fetched = self._fetched is not None and isinstance(error, SlideError)
        if fetched and str(self._fetched) in str(error):
            return error.about(self.sample.path)
        return error

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None
        if self._fetched is not None:
            shutil.rmtree(self._fetched, ignore_errors=True)
            self._fetched = None


def _tissue(task: SlideTask) -> None:
    from hespotex.stages.tissue import run_tissue

    run_tissue(task.slide(), task.slide_id, task.config)


def _tiles(task: SlideTask) -> None:
    from hespotex.stages.tiles import run_tiles

    run_tiles(task.slide(), task.slide_id, task.config)


def _features(task: SlideTask) -> dict[str, float]:
    from hespotex.stages.features import run_features

    shared = task.shared
    runner, pool = shared.runner(), shared.reading_pool()
    setup = shared.take_setup()
    return {**run_features(task.slide(), task.slide_id, task.config, runner, pool), "setup": setup}


def _graph(task: SlideTask) -> None:
    from hespotex.stages.graph import run_graph

    run_graph(task.slide_id, task.config)


def _decode(task: SlideTask) -> None:
    from hespotex.stages.decode import run_decode

    run_decode(task.slide_id, task.config, task.shared.decoder())


def _outputs(task: SlideTask) -> None:
    from hespotex.outputs.per_slide import write_slide_outputs

    write_slide_outputs(task.slide(), task.slide_id, task.config)


# Each stage on one slide; a stage may return figures to keep in its stage record.
STAGE_RUNS: dict[str, Callable[[SlideTask], dict | None]] = {
    "tissue": _tissue,
    "tiles": _tiles,
    "features": _features,
    "graph": _graph,
    "decode": _decode,
    "outputs": _outputs,
}


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def is_current(task: SlideTask, stage: str) -> bool:
    """The stage's record exists and is newer than what the stage read: the previous stage's
    record (the slide file for the first stage) and, for decode, the checkpoint."""
    paths = SlidePaths(task.config.results, task.slide_id)
    made = _mtime_ns(paths.stage_record(stage))
    if made is None:
        return False
    index = STAGES.index(stage)
    if index:
        inputs = [paths.stage_record(STAGES[index - 1])]
    else:  # a remote slide's first stage is redone only when its record is missing
        inputs = [] if task.sample.is_remote else [task.sample.slide_path]
    if stage == "decode" and task.config.decode.checkpoint is not None:
        inputs.append(Path(task.config.decode.checkpoint))
    for path in inputs:
        mtime = _mtime_ns(path)
        if mtime is None or mtime > made:
            return False
    return True


@contextmanager
def stage_log(config: PipelineConfig, stage: str, slide_id: str) -> Iterator[None]:
    """Everything logged while the stage runs also goes to ``logs/{stage}/{slide}.log``,
    written afresh for each attempt."""
    path = LogPaths(config.logs).stage(stage, slide_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def run_slide(
    task: SlideTask, stages: Sequence[str], force: bool, per_slide_logs: bool
) -> SlideResult:
    """The slide through ``stages`` in order; the first failure ends it."""
    first = STAGES.index(stages[0])
    if first and not is_current(task, STAGES[first - 1]):
        logger.info("%s: waiting for its %s stage to succeed", task.slide_id, STAGES[first - 1])
        return SlideResult(task.slide_id, Outcome.WAITING, STAGES[first - 1])
    paths = SlidePaths(task.config.results, task.slide_id)
    ran = False
    for stage in stages:
        if not force and is_current(task, stage):
            logger.info("%s: %s is done already", task.slide_id, stage)
            continue
        ran = True
        log = stage_log(task.config, stage, task.slide_id) if per_slide_logs else nullcontext()
        with log:
            try:
                with stage_record(paths, stage) as record:
                    record.update(STAGE_RUNS[stage](task) or {})
            except HespotexError as raised:
                error = task.named(raised)
                logger.error("%s failed [slide %s]: %s", stage, task.slide_id, error)
                return SlideResult(task.slide_id, Outcome.FAILED, stage, str(error))
            except Exception as error:  # a slide must fail alone, whatever it raises
                logger.exception("%s failed [slide %s]: unexpected error", stage, task.slide_id)
                cause = f"unexpected {type(error).__name__}: {error}"
                return SlideResult(task.slide_id, Outcome.FAILED, stage, cause)
    if ran and stages[-1] == STAGES[-1]:
        write_slide_qc(task.config, task.slide_id)
    return SlideResult(task.slide_id, Outcome.DONE)


def run_batch(
    config: PipelineConfig,
    samples: Sequence[SampleRow],
    stages: Sequence[str],
    force: bool = False,
    per_slide_logs: bool = False,
) -> list[SlideResult]:
    """Each slide through ``stages`` (consecutive stages of ``STAGES``), one after another."""
    results = []
    with SharedWork(config) as shared:
        for sample in samples:
            task = SlideTask(sample, config, shared)
            try:
                results.append(run_slide(task, stages, force, per_slide_logs))
            finally:
                task.close()
    return results


def write_manifest(path: Path, results: Sequence[SlideResult]) -> None:
    """How each slide of the shard ended: the job's declared output."""
    table = pd.DataFrame([asdict(result) for result in results])
    write_tsv(path, table.reindex(columns=["slide_id", "status", "stage", "cause"]))


def record_failures(path: Path, results: Sequence[SlideResult]) -> int:
    """Append the failed slides to the shard's failure log, which outlives the job: its line
    count is the Snakemake parameter that makes the next run retry the shard. Returns how many."""
    failed = [result for result in results if result.status is Outcome.FAILED]
    if failed:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as log:
            for result in failed:
                entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **asdict(result)}
                log.write(json.dumps(entry) + "\n")
    return len(failed)
