"""File checksums, kept apart from the encoders so that reading one does not import torch.

Encoder weights run to gigabytes (ViT-g/14 ≈ 4.5 GB, half a minute to hash), and a run checks
them at every Snakemake start and in every job that loads them; ``cached_sha256`` hashes a
file once and remembers the result by path, size and modification time in
``$HESPOTEX_CACHE_DIR/sha256.json`` (default ``~/.cache/hespotex``), so a changed file is
hashed again and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import suppress
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_DIR_VARIABLE = "HESPOTEX_CACHE_DIR"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hespotex"


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def cached_sha256(path: Path) -> str:
    """``file_sha256(path)``, hashed once per (resolved path, size, mtime). A cache that
    cannot be written (a read-only home) only costs the hashing."""
    path = Path(path).resolve()
    status = path.stat()
    key = f"{path}|{status.st_size}|{status.st_mtime_ns}"
    cache = cache_dir() / "sha256.json"
    entries = _read_cache(cache)
    if key in entries:
        return entries[key]
    digest = file_sha256(path)
    stale = f"{path}|"
    entries = {name: value for name, value in entries.items() if not name.startswith(stale)}
    entries[key] = digest
    # Jobs may write at once: each through its own temporary file, the last rename wins.
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries, indent=0, sort_keys=True))
        os.replace(tmp, cache)
    except OSError as error:
        with suppress(OSError):
            tmp.unlink()
        logger.debug("cannot remember the checksum of %s in %s: %s", path, cache, error)
    return digest
