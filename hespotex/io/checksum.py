"""File checksums, kept apart from the encoders so that reading one does not import torch.

Foundation-model weights are gigabytes (H-optimus-0: 4.5 GB), and every Snakemake start (each
SLURM job's too) works out the encoder identity from its checksum, so a checksum is remembered
per file under the user's cache folder, keyed by the file's real path, size and modification
time: a changed file is hashed again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hespotex.errors import OutputWriteError
from hespotex.io.atomic import atomic_path

CACHE_ENV = "HESPOTEX_CACHE"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_folder() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hespotex" / "sha256"


def cached_file_sha256(path: Path) -> str:
    """``file_sha256``, remembered while the file keeps its size and modification time. An
    unwritable cache only costs the hashing."""
    real = Path(path).resolve()
    status = real.stat()
    stamp = f"{status.st_size} {status.st_mtime_ns}"
    entry = cache_folder() / hashlib.sha256(str(real).encode()).hexdigest()
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
