"""Remote slides against real servers on localhost: an S3-compatible server (moto's server
mode, as s3fs's own tests use) holding the real SVS and the real DICOM series in IDC's layout
(``<series uuid>/<instance>.dcm``), read anonymously, and an HTTP server answering for an SVS
the way GDC's data endpoint does (``/data/<file uuid>``, no file name in the URL).

Each slide is fetched into the scratch folder by the job that reads it, checked (size, MD5 or
ETag) before it is read, and removed when the job is done with it; a missing or corrupt remote
slide fails alone, named; a resumed run fetches only what it still needs.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest
from conftest import DICOM_FOLDER, SVS, write_config

from hespotex.config import RemoteConfig, parse_config, read_sample_sheet
from hespotex.errors import ConfigError, SlideOpenError
from hespotex.io.records import TissueRecord
from hespotex.io.remote import fetch_slide
from hespotex.io.slide import open_slide
from hespotex.paths import CohortPaths, SlidePaths
from hespotex.pipeline.engine import Outcome, run_batch
from hespotex.stage_table import STAGES

BUCKET = "idc-open-data"
SVS_KEY = "5d8a3bd2-svs/CMU-1-Small-Region.svs"
DICOM_PREFIX = "1b2e6f0c-series"
GDC_UUID = "0a7c4c8e-2f6d-4c1e-9c55-3f0c2a6b9e11"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def s3_endpoint():
    """A public bucket in IDC's layout on a local S3 server: the SVS, the DICOM series, a
    file that is not a slide."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="uploader",
        aws_secret_access_key="uploader",
    )
    client.create_bucket(Bucket=BUCKET, ACL="public-read")
    public = {"ACL": "public-read"}
    client.upload_file(str(SVS), BUCKET, SVS_KEY, ExtraArgs=public)
    for instance in sorted(DICOM_FOLDER.glob("*.dcm")):
        client.upload_file(
            str(instance), BUCKET, f"{DICOM_PREFIX}/{instance.name}", ExtraArgs=public
        )
    client.put_object(Bucket=BUCKET, Key="corrupt/broken.svs", Body=b"not a slide" * 100, **public)
    yield endpoint
    server.stop()


# GETs the GDC-like server answered, by path.
HTTP_GETS: Counter[str] = Counter()


class GdcLikeHandler(http.server.SimpleHTTPRequestHandler):
    """``/data/<uuid>`` answers the SVS, as GDC's data endpoint answers a file by its UUID."""

    def translate_path(self, path: str) -> str:
        return str(SVS) if path == f"/data/{GDC_UUID}" else "/nonexistent"

    def do_HEAD(self) -> None:
        if self.path == "/data/overloaded":
            self.send_error(503, "Service Unavailable")
            return
        super().do_HEAD()

    def do_GET(self) -> None:
        HTTP_GETS[self.path] += 1
        if self.path == "/data/overloaded":
            self.send_error(503, "Service Unavailable")
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_endpoint():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GdcLikeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def remote_config(endpoint: str) -> RemoteConfig:
    return RemoteConfig(endpoint_url=endpoint, anonymous="yes", retries=1)


def test_an_svs_is_fetched_from_s3_whole_checked_and_readable(s3_endpoint, tmp_path):
    local = fetch_slide(f"s3://{BUCKET}/{SVS_KEY}", tmp_path / "svs", remote_config(s3_endpoint))
    assert local.name == "CMU-1-Small-Region.svs" and md5_of(local) == md5_of(SVS)
    assert sorted(path.name for path in local.parent.iterdir()) == [local.name], "no .part left"
    with open_slide(local, "svs") as slide, open_slide(SVS, "svs") as original:
        assert slide.dimensions == original.dimensions and slide.reader == original.reader


def test_a_dicom_series_is_fetched_as_a_folder_from_its_prefix(s3_endpoint, tmp_path):
    local = fetch_slide(
        f"s3://{BUCKET}/{DICOM_PREFIX}/", tmp_path / "dicom", remote_config(s3_endpoint)
    )
    assert sorted(path.name for path in local.iterdir()) == sorted(
        path.name for path in DICOM_FOLDER.glob("*.dcm")
    )
    with open_slide(local, "dicom") as slide, open_slide(DICOM_FOLDER, "dicom") as original:
        assert slide.dimensions == original.dimensions


def test_an_svs_is_fetched_from_a_gdc_like_data_endpoint(http_endpoint, tmp_path):
    url = f"{http_endpoint}/data/{GDC_UUID}"
    local = fetch_slide(url, tmp_path / "gdc", RemoteConfig(), SVS.stat().st_size, md5_of(SVS))
    assert local.name == GDC_UUID and md5_of(local) == md5_of(SVS)
    with open_slide(local, "gdc") as slide:
        assert slide.reader == "openslide", "read by its content, not its name"


@pytest.mark.parametrize(
    ("where", "size_bytes", "md5", "cause"),
    [
        ("s3-missing", None, None, "does not exist"),
        ("http-missing", None, None, "does not exist"),
        ("s3-svs", 12345, None, "size_bytes says 12,345"),
        ("s3-svs", None, "0" * 32, "MD5 differs from the sheet's md5"),
    ],
)
def test_a_remote_slide_that_is_not_what_the_sheet_says_fails_naming_it(
    s3_endpoint, http_endpoint, tmp_path, where, size_bytes, md5, cause
):
    url = {
        "s3-missing": f"s3://{BUCKET}/no-such-series/slide.svs",
        "http-missing": f"{http_endpoint}/data/no-such-uuid",
        "s3-svs": f"s3://{BUCKET}/{SVS_KEY}",
    }[where]
    config = remote_config(s3_endpoint)
    with pytest.raises(SlideOpenError, match=cause) as raised:
        fetch_slide(url, tmp_path / "slide", config, size_bytes, md5)
    assert str(raised.value).startswith(url)
    leftovers = list((tmp_path / "slide").rglob("*")) if (tmp_path / "slide").exists() else []
    assert not leftovers, "a failed download leaves nothing to read"


def test_a_refused_connection_is_retried_then_fails_naming_the_url(tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}/data/{GDC_UUID}"
    with pytest.raises(SlideOpenError, match="failed after 2 tries") as raised:
        fetch_slide(url, tmp_path / "slide", RemoteConfig(retries=1))
    assert str(raised.value).startswith(url) and "does not exist" not in str(raised.value)
    assert "trying again" in caplog.text


def test_a_server_error_over_https_is_retried_not_taken_for_a_missing_file(
    http_endpoint, tmp_path, caplog
):
    url = f"{http_endpoint}/data/overloaded"
    with pytest.raises(SlideOpenError, match="failed after 2 tries") as raised:
        fetch_slide(url, tmp_path / "slide", RemoteConfig(retries=1))
    assert "does not exist" not in str(raised.value)
    assert "trying again" in caplog.text


def test_a_hash_in_a_url_is_kept_and_comment_lines_keep_line_numbers(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("slide_id\tpath\n# a comment\ns1\ts3://bucket/x#1.svs\n# another\ns2\n")
    with pytest.raises(ConfigError, match="line 5: path"):
        read_sample_sheet(sheet)
    sheet.write_text("slide_id\tpath\n# a comment\ns1\ts3://bucket/x#1.svs\n")
    assert read_sample_sheet(sheet)["s1"].path == "s3://bucket/x#1.svs"


def write_remote_sheet(path: Path, rows: list[tuple[str, str, int | None, str | None]]) -> Path:
    lines = ["slide_id\tpath\tsize_bytes\tmd5"]
    lines += [f"{slide}\t{url}\t{size or ''}\t{md5 or ''}" for slide, url, size, md5 in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def remote_cohort(s3_endpoint, http_endpoint, tmp_path):
    """A sheet of local and remote slides, one remote missing and one corrupt."""
    sheet = write_remote_sheet(
        tmp_path / "samples.tsv",
        [
            ("local-svs", str(SVS), None, None),
            ("s3-svs", f"s3://{BUCKET}/{SVS_KEY}", SVS.stat().st_size, md5_of(SVS)),
            ("s3-dicom", f"s3://{BUCKET}/{DICOM_PREFIX}/", None, None),
            ("gdc-svs", f"{http_endpoint}/data/{GDC_UUID}", SVS.stat().st_size, None),
            ("s3-missing", f"s3://{BUCKET}/no-such-series/", None, None),
            ("s3-corrupt", f"s3://{BUCKET}/corrupt/broken.svs", None, None),
        ],
    )
    scratch = tmp_path / "scratch"
    remote = {
        "endpoint_url": s3_endpoint,
        "anonymous": "yes",
        "retries": 1,
        "scratch": str(scratch),
    }
    return sheet, scratch, remote


def test_the_engine_fetches_each_remote_slide_for_its_job_and_removes_it(remote_cohort, tmp_path):
    sheet, scratch, remote = remote_cohort
    config = parse_config(
        {
            "encoder": {"architecture": "stain-stats"},
            "samples": str(sheet),
            "results": str(tmp_path / "results"),
            "remote": remote,
        }
    )
    samples = list(read_sample_sheet(sheet).values())
    results = {r.slide_id: r for r in run_batch(config, samples, STAGES[:3])}
    assert {s: r.status for s, r in results.items()} == {
        "local-svs": Outcome.DONE,
        "s3-svs": Outcome.DONE,
        "s3-dicom": Outcome.DONE,
        "gdc-svs": Outcome.DONE,
        "s3-missing": Outcome.FAILED,
        "s3-corrupt": Outcome.FAILED,
    }
    assert results["s3-missing"].stage == "tissue"
    assert "no-such-series/: the file does not exist" in results["s3-missing"].cause
    corrupt = results["s3-corrupt"].cause
    assert corrupt.startswith(f"s3://{BUCKET}/corrupt/broken.svs: no reader can open it")
    assert str(scratch) not in corrupt, "named by its URL, not the scratch file"
    record = TissueRecord.read(SlidePaths(config.results, "s3-svs").tissue_record)
    assert record.slide_path == f"s3://{BUCKET}/{SVS_KEY}"
    assert not list(scratch.rglob("*")), "every fetched slide removed once its job is done"
    for slide_id in ("s3-svs", "s3-dicom", "gdc-svs"):
        assert SlidePaths(config.results, slide_id).features.is_dir()


@pytest.mark.e2e
def test_snakemake_runs_remote_and_local_slides_and_a_rerun_fetches_only_what_it_needs(
    remote_cohort, trained_checkpoint, tmp_path
):
    import pandas as pd
    from test_workflow import run_snakemake

    sheet, scratch, remote = remote_cohort
    config = write_config(tmp_path, sheet, trained_checkpoint, remote=remote)
    gdc = f"/data/{GDC_UUID}"
    gets_before = HTTP_GETS[gdc]  # the module's other tests fetch it too
    first = run_snakemake(tmp_path, config, "--cores", "2")
    assert first.returncode != 0, "the run ends in error, naming the failed slides"
    assert "s3-missing" in first.stderr and "s3-corrupt" in first.stderr
    results = tmp_path / "results"
    for slide_id in ("local-svs", "s3-svs", "s3-dicom", "gdc-svs"):
        assert SlidePaths(results, slide_id).expression.is_file(), slide_id
        assert SlidePaths(results, slide_id).qupath.is_file(), slide_id
    summary = pd.read_csv(CohortPaths(results).summary, sep="\t").set_index("slide_id")
    assert summary.loc["s3-missing", "status"] == "failed"
    assert "does not exist" in summary.loc["s3-missing", "reason"]
    assert summary.loc["s3-corrupt", "status"] == "failed"
    assert not list(scratch.rglob("*")), "scratch is empty at the end"

    fetched_before = HTTP_GETS[gdc]
    assert fetched_before - gets_before == 3, (
        "by each job that reads it: prepare, features, predict"
    )
    records = {
        (slide, stage): SlidePaths(results, slide).stage_record(stage).stat().st_mtime_ns
        for slide in ("s3-svs", "gdc-svs")
        for stage in STAGES
    }
    second = run_snakemake(tmp_path, config, "--cores", "2")
    assert second.returncode != 0 and "s3-missing" in second.stderr
    assert HTTP_GETS[gdc] == fetched_before, "a finished slide is not fetched again"
    for slide in ("s3-svs", "gdc-svs"):
        for stage in STAGES:
            record = SlidePaths(results, slide).stage_record(stage)
            assert record.stat().st_mtime_ns == records[slide, stage], (slide, stage)
    assert not list(scratch.rglob("*"))
