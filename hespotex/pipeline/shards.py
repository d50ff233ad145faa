"""How a sample sheet is cut into the workflow's jobs: shards of consecutive slides.

Each job kind (``paths.JOBS``: prepare, features, predict) takes ``slides_per_job`` slides of
the sheet at a time, in sheet order, so a cohort of N slides is about N/50 + N/10 + N/50 jobs
(the defaults) instead of one job per slide and stage. A shard's job reads only its own rows:
the Snakefile writes each shard's validated rows to a small sheet. A job depends on the
upstream shards that hold its slides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hespotex.config import SampleRow, SlidesPerJob, sample_sheet_text
from hespotex.paths import RunPaths
from hespotex.stage_table import JOBS


def shard_id(index: int) -> str:
    return f"{index:05d}"


def previous_job(job: str) -> str:
    """The job kind whose shards hold a ``job`` shard's slides before it."""
    kinds = list(JOBS)
    return kinds[kinds.index(job) - 1]


@dataclass(frozen=True)
class ShardPlan:
    slide_ids: tuple[str, ...]
    sizes: SlidesPerJob

    def size(self, job: str) -> int:
        return getattr(self.sizes, job)

    def shards(self, job: str) -> list[str]:
        count = -(-len(self.slide_ids) // self.size(job))
        return [shard_id(index) for index in range(count)]

    def slides(self, job: str, shard: str) -> tuple[str, ...]:
        start = int(shard) * self.size(job)
        return self.slide_ids[start : start + self.size(job)]

    def upstream(self, job: str, shard: str) -> list[str]:
        """The shards of the job before ``job`` that hold this shard's slides."""
        previous = previous_job(job)
        start = int(shard) * self.size(job)
        stop = min(start + self.size(job), len(self.slide_ids)) - 1
        first, last = start // self.size(previous), stop // self.size(previous)
        return [shard_id(index) for index in range(first, last + 1)]


def write_shard_sheets(
    plan: ShardPlan, samples: Mapping[str, SampleRow], paths: RunPaths
) -> list[Path]:
    """Each shard's rows as a sample sheet, rewritten only where they changed (so an unchanged
    sheet leaves every job up to date); returns the sheets written."""
    from hespotex.io.atomic import atomic_path

    written = []
    for job in JOBS:
        for shard in plan.shards(job):
            path = paths.shard_sheet(job, shard)
            text = sample_sheet_text([samples[slide_id] for slide_id in plan.slides(job, shard)])
            if path.is_file() and path.read_text() == text:
                continue
            with atomic_path(path) as tmp:
                tmp.write_text(text)
            written.append(path)
    return written


def failed_attempts(paths: RunPaths, job: str, shard: str) -> int:
    """How many slide attempts of the shard have failed: the lines of its failure log. It grows
    with every failed attempt, so as a rule's parameter it makes Snakemake rerun a shard whose
    slides failed last time, once."""
    try:
        with paths.shard_failures(job, shard).open(encoding="utf-8") as log:
            return sum(1 for _ in log)
    except FileNotFoundError:
        return 0
