"""Remote slides against local ones: the time per slide and the scratch folder's high-water
mark over a cohort of 20 slides.

The same slides twice, side by side in one run: read from local disk, and fetched from an
S3-compatible server on localhost (moto's server mode, a public bucket, read anonymously) into
the scratch folder by the job that reads them. Each cohort goes through the engine as a
``prepare`` job does (tissue and tiles stages, one process, the slides one after another);
a thread samples the scratch folder's size every 10 ms. The slides are ``--slide`` copied
under 20 keys (default: the real Aperio SVS of ../shared/data, 1.9 MB). A localhost server
measures what the pipeline adds (fetch, checks, removal), not a network.

    .venv/bin/python benchmarks/remote_staging.py --work /tmp/hespotex-staging

prints a Markdown table (also written to <work>/table.md).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from timing import free_port, write_table

from hespotex.config import SampleRow, parse_config
from hespotex.pipeline.engine import Outcome, run_batch
from hespotex.stage_table import JOBS

REPO = Path(__file__).resolve().parents[1]
SLIDES = 20
BUCKET = "staging-benchmark"


class HighWater(threading.Thread):
    """The largest total size of the files under ``folder`` seen while running."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder = folder
        self.bytes = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            if self.folder.exists():
                size = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
                self.bytes = max(self.bytes, size)
            time.sleep(0.01)


def run_cohort(samples: list[SampleRow], work: Path, name: str, remote: dict) -> tuple[float, int]:
    config = parse_config(
        {
            "encoder": {"architecture": "stain-stats"},
            "results": str(work / name),
            "remote": remote,
        }
    )
    watcher = HighWater(Path(remote["scratch"]))
    watcher.start()
    started = time.perf_counter()
    results = run_batch(config, samples, JOBS["prepare"])
    seconds = time.perf_counter() - started
    watcher.running = False
    watcher.join()
    failed = [result for result in results if result.status is not Outcome.DONE]
    if failed:
        raise SystemExit(f"{name}: {failed[0].slide_id} {failed[0].stage}: {failed[0].cause}")
    return seconds, watcher.bytes


def main() -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument(
        "--slide", type=Path, default=REPO.parent / "shared/data/slides/CMU-1-Small-Region.svs"
    )
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="benchmark", aws_secret_access_key="benchmark",
    )  # fmt: skip
    client.create_bucket(Bucket=BUCKET, ACL="public-read")
    for index in range(SLIDES):
        key = f"slide-{index:02d}/{args.slide.name}"
        client.upload_file(str(args.slide), BUCKET, key, ExtraArgs={"ACL": "public-read"})
    size = args.slide.stat().st_size
    local = [SampleRow(slide_id=f"local-{i:02d}", path=str(args.slide)) for i in range(SLIDES)]
    remote = [
        SampleRow(
            slide_id=f"remote-{i:02d}",
            path=f"s3://{BUCKET}/slide-{i:02d}/{args.slide.name}",
            size_bytes=size,
        )
        for i in range(SLIDES)
    ]
    settings = {"endpoint_url": endpoint, "anonymous": "yes", "scratch": str(work / "scratch")}
    local_seconds, _ = run_cohort(local, work, "local", settings)
    remote_seconds, high_water = run_cohort(remote, work, "remote", settings)
    server.stop()
    left = sum(1 for path in (work / "scratch").rglob("*") if path.is_file())
    rows = [
        f"{SLIDES} slides of {size / 1e6:.2f} MB ({args.slide.name}), tissue and tiles stages",
        "",
        "| slides | seconds per slide | scratch high-water (MB) | files left in scratch |",
        "|---|---|---|---|",
        f"| local disk | {local_seconds / SLIDES:.3f} | – | – |",
        f"| S3 on localhost, fetched per job | {remote_seconds / SLIDES:.3f} | "
        f"{high_water / 1e6:.2f} | {left} |",
        "",
        f"remote / local: {remote_seconds / local_seconds:.2f}; the high-water mark is "
        f"{high_water / size:.2f} slides' worth",
    ]
    write_table(work / "table.md", rows)


if __name__ == "__main__":
    main()
