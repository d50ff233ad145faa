"""Which device a job's encoder runs on, and on a machine with several GPUs, which one.

A local run keeps ``--resources gpu=N`` features jobs at once on a node with N GPUs;
Snakemake counts them but names no device. Each job's process claims a GPU for itself: an
exclusive lock on one of N files in a folder of this machine, held until the process ends (the
kernel drops the lock even if it is killed), so no two jobs share a GPU and a freed one is
taken by the next job. Where one GPU is visible (a SLURM job given its own), it is that one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hespotex.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WAIT_SECONDS = 1.0
# This process's claimed GPU and its lock, kept open for the process's life.
_CLAIMED: list[tuple[int, IO]] = []


def lock_folder() -> Path:
    """This machine's GPU claims, one folder per user (locks need a local file system)."""
    return Path(tempfile.gettempdir()) / f"hespotex-gpu-claims-{os.getuid()}"


def _own_folder(folder: Path) -> Path:
    """``folder``, made private (0700) if missing; refused unless it is a real folder of this
    user's, so no one else can plant lock files (or links) in it."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = folder.lstat()
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        raise ConfigError(f"{folder}: not a folder of this user's; remove it or set TMPDIR")
    return folder


def claim_slot(count: int, folder: Path | None = None) -> tuple[int, IO]:
    """The first of ``count`` slots no other process holds, and its open lock (the claim
    lasts while it is open); waits while all are held."""
    folder = _own_folder(folder or lock_folder())
    waited = False
    while True:
        for index in range(count):
            descriptor = os.open(
                folder / f"gpu-{index}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600
            )
            handle = os.fdopen(descriptor, "r+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return index, handle
        if not waited:
            logger.info("all %d GPUs are claimed by other jobs; waiting for one", count)
            waited = True
        time.sleep(WAIT_SECONDS)


def pick_device(preference: str, claim: bool = False) -> torch.device:
    """``auto``: CUDA when present, else the CPU. With several GPUs visible, a features job
    (``claim``) runs on the GPU its process claims (``claim_slot``); other work (decoding,
    training) on the first, claiming nothing, so it never holds up a features job."""
    import torch  # heavy: imported to pick a device, not to claim a GPU (claim_slot)

    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is visible")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count <= 1 or not claim:
        return torch.device("cuda")
    if not _CLAIMED:
        _CLAIMED.append(claim_slot(count))
        logger.info("this job runs on GPU %d of %d", _CLAIMED[0][0], count)
    return torch.device("cuda", _CLAIMED[0][0])
