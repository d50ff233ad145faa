"""Stage records: ``qc/stages/{stage}.json``, written once a stage has succeeded on a slide.

A record says the stage is done (the engine redoes a stage whose record is missing or older
than what the stage read) and what it cost: wall time, the process's peak memory, the host,
and whatever figures the stage adds (e.g. where the features time went). A failed stage leaves
no record, so a rerun retries it.
"""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from hespotex.io.atomic import write_json
from hespotex.paths import SlidePaths
from hespotex.stage_table import STAGES

KIB_PER_MIB = 1024


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


@contextmanager
def stage_record(paths: SlidePaths, stage: str) -> Iterator[dict]:
    """Run the block as ``stage``; once it has succeeded, write the stage's record with the
    figures the block put in the dict it is given."""
    started = time.perf_counter()
    figures: dict = {}
    yield figures
    write_json(
        paths.stage_record(stage),
        {
            "stage": stage,
            "seconds": round(time.perf_counter() - started, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            **figures,
        },
    )


def read_stage_records(paths: SlidePaths) -> dict[str, dict]:
    """The slide's stage records, by stage, in stage order; stages not done are left out."""
    records = {}
    for stage in STAGES:
        path = paths.stage_record(stage)
        if path.is_file():
            records[stage] = json.loads(path.read_text())
    return records
