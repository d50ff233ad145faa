"""Slides that live in object storage or behind HTTPS, fetched into a scratch folder before
they are read.

A sheet path ``s3://bucket/key.svs``, ``gs://...`` or ``https://...`` names one file; one
ending in ``/`` (or an S3 prefix holding several files, as IDC keeps a DICOM series under
``s3://idc-open-data/<series uuid>/``) names a folder, fetched whole. fsspec does the transfer
(s3fs for S3, its HTTP file system for HTTPS; gcsfs for GCS where installed). Each file is
written as ``.part`` and renamed only once its size matches the server's (and the sheet's
``size_bytes`` and ``md5``, or S3's ETag where it is an MD5), so a partial download is never
read. Transient errors are retried; a file that is not there fails at once. Every failure is a
``SlideOpenError`` naming the URL and the cause, so the slide fails alone.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import shutil
import time
from pathlib import Path

from hespotex.config import RemoteConfig
from hespotex.errors import SlideOpenError

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 1.0


@functools.cache
def _has_aws_credentials() -> bool:
    """Whether botocore's credential chain finds any (variables, ~/.aws, SSO, an instance or
    container role), as s3fs would sign with them."""
    import botocore.session

    return botocore.session.get_session().get_credentials() is not None


def storage_options(url: str, config: RemoteConfig) -> dict:
    """fsspec's options for ``url``: S3 anonymously for public buckets, else with the usual
    AWS credentials; the configured S3 endpoint."""
    if not url.startswith("s3://"):
        return {}
    anonymous = config.anonymous == "yes" or (
        config.anonymous == "auto" and not _has_aws_credentials()
    )
    options: dict = {"anon": anonymous}
    if config.endpoint_url:
        options["client_kwargs"] = {"endpoint_url": config.endpoint_url}
    return options


def _file_system(url: str, config: RemoteConfig):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **storage_options(url, config))
    except (ImportError, ValueError) as error:
        raise SlideOpenError(url, f"cannot reach it: {error}") from None


def _md5(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _s3_etag_md5(url: str, info: dict) -> str | None:
    """S3's ETag where it is the object's MD5: an S3 object uploaded in one part and not
    encrypted with KMS or a customer's key (their ETags are not the MD5)."""
    if not url.startswith("s3://"):
        return None
    if info.get("ServerSideEncryption") == "aws:kms" or info.get("SSECustomerAlgorithm"):
        return None
    etag = str(info.get("ETag") or "").strip('"')
    return etag if len(etag) == 32 and "-" not in etag else None


def _masks_a_transient_error(error: OSError) -> bool:
    """fsspec's HTTP file system reports any failure to size a URL (5xx, 429, a timeout, a
    refused connection) as FileNotFoundError; only a 404 or 410 under it means no file."""
    cause = error.__cause__
    if not isinstance(error, FileNotFoundError) or cause is None:
        return False
    return getattr(cause, "status", None) not in (404, 410)


def _retrying(url: str, retries: int, action, what: str):
    """``action()``, tried again after a transient error, up to ``retries`` more times with
    doubling waits; a missing file or a refusal is not retried."""
    wait = FIRST_RETRY_SECONDS
    for attempt in itertools.count():
        try:
            return action()
        except Exception as error:  # the transports raise their own kinds; all are retried
            not_found = isinstance(error, FileNotFoundError | PermissionError)
            if not_found and not _masks_a_transient_error(error):
                raise
            cause = error.__cause__ if not_found else error
            if attempt >= retries:
                raise SlideOpenError(
                    url, f"{what} failed after {attempt + 1} tries: {cause}"
                ) from None
            logger.warning("%s: %s failed (%s); trying again in %.0f s", url, what, cause, wait)
            time.sleep(wait)
            wait *= 2


def _fetch_file(fs, remote: str, url: str, local: Path, config: RemoteConfig) -> dict:
    """``remote`` into ``local`` through a ``.part`` file, its size checked; the server's
    info about it."""
    info = _retrying(url, config.retries, lambda: fs.info(remote), "asking its size")
    partial = local.with_name(local.name + ".part")
    local.parent.mkdir(parents=True, exist_ok=True)
    _retrying(url, config.retries, lambda: fs.get_file(remote, str(partial)), "the download")
    size = partial.stat().st_size
    expected = info.get("size")
    if expected is not None and size != expected:
        partial.unlink(missing_ok=True)
        raise SlideOpenError(url, f"the download has {size:,} bytes, the server said {expected:,}")
    partial.rename(local)
    return info


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def fetch_slide(
    url: str,
    destination: Path,
    config: RemoteConfig,
    size_bytes: int | None = None,
    md5: str | None = None,
) -> Path:
    """The slide at ``url`` fetched into the empty folder ``destination`` (made if missing):
    the local path to open — the file, or the folder of a multi-file slide. On failure the
    folder is emptied of what was fetched."""
    fs, root = _file_system(url, config)
    destination.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        # Over HTTP a folder is only ever named as one: asking would download the file.
        is_folder = url.endswith("/") or (
            not url.startswith(("http://", "https://"))
            and _retrying(url, config.retries, lambda: fs.isdir(root), "looking it up")
        )
        if is_folder:
            files = sorted(_retrying(url, config.retries, lambda: fs.find(root), "listing it"))
            if not files:
                raise FileNotFoundError(root)
            prefix = root.rstrip("/") + "/"
            for remote in files:
                local_file = (destination / remote[len(prefix) :]).resolve()
                if not local_file.is_relative_to(destination.resolve()):
                    raise SlideOpenError(url, f"refused: {remote} would land outside scratch")
                _fetch_file(fs, remote, url, local_file, config)
            local = destination
            fetched = sum(path.stat().st_size for path in destination.rglob("*") if path.is_file())
        else:
            local = destination / Path(root.split("?")[0]).name
            info = _fetch_file(fs, root, url, local, config)
            fetched = local.stat().st_size
            if md5 is None:
                md5_expected, source = _s3_etag_md5(url, info), "S3's ETag"
            else:
                md5_expected, source = md5, "the sheet's md5"
            if md5_expected is not None and _md5(local) != md5_expected:
                raise SlideOpenError(url, f"the download's MD5 differs from {source}")
    except FileNotFoundError:
        _empty(destination)
        raise SlideOpenError(url, "the file does not exist (nothing at that URL)") from None
    except PermissionError as error:
        _empty(destination)
        raise SlideOpenError(url, f"access refused: {error}") from None
    except SlideOpenError:
        _empty(destination)
        raise
    if size_bytes is not None and fetched != size_bytes:
        _empty(destination)
        raise SlideOpenError(
            url, f"the download has {fetched:,} bytes, the sheet's size_bytes says {size_bytes:,}"
        )
    seconds = time.perf_counter() - started
    logger.info("fetched %s: %.1f MB in %.1f s", url, fetched / 1e6, seconds)
    return local
