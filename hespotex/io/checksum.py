"""File checksums, kept apart from the encoders so that reading one does not import torch.

Encoder weights run to gigabytes (H-optimus-0: 4.5 GB, half a minute to hash), and a run
checks them at every Snakemake start and in every job that loads them; ``cached_sha256``
hashes a file once and remembers the result by its real path, size and modification time, one
small file per weights file under ``$HESPOTEX_CACHE_DIR/sha256`` (default
``~/.cache/hespotex``): jobs starting at once never overwrite each other's entries, and a
changed file is hashed again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hespotex.errors import OutputWriteError
from hespotex.io.atomic import atomic_path

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
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hespotex"


def cached_sha256(path: Path) -> str:
    """``file_sha256(path)``, hashed once per (real path, size, mtime). A cache that cannot be
    written (a read-only home) only costs the hashing."""
    real = Path(path).resolve()
    status = real.stat()
    stamp = f"{status.st_size} {status.st_mtime_ns}"
    entry = cache_dir() / "sha256" / hashlib.sha256(str(real).encode()).hexdigest()
    try:
        recorded_stamp, digest = entry.read_text().rsplit(" ", 1)
        if recorded_stamp == stamp:
            return digest
    except (OSError, ValueError):
        pass
    digest = file_sha256(real)
    try:
        with atomic_path(entry) as tmp:
            tmp.write_text(f"{stamp} {digest}")
    except (OSError, OutputWriteError):
        pass
    return digest
