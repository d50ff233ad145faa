"""Write-then-rename, so a killed job never leaves a file that looks finished.

Every output is written under ``<name>.tmp`` beside its final name and moved into place with
``os.replace`` (atomic on one file system) only once complete. A stale ``.tmp`` from a killed
run is removed before the next attempt writes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hespotex.errors import OutputWriteError

TMP_SUFFIX = ".tmp"
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def temporary_name(final: Path) -> Path:
    return final.with_name(final.name + TMP_SUFFIX)


@contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write a file or directory to; publish it on success."""
    final = Path(final)
    tmp = temporary_name(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove(tmp)
    try:
        yield tmp
    except OSError as error:
        _remove(tmp)
        if error.errno in WRITE_FAILURES:
            raise OutputWriteError(final, os.strerror(error.errno)) from error
        raise
    except BaseException:
        _remove(tmp)
        raise
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_json(final: Path, payload: Any) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_png(final: Path, image: np.ndarray | Image.Image) -> None:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    with atomic_path(final) as tmp:
        picture.save(tmp, format="PNG")


def read_png(path: Path) -> np.ndarray:
    """A PNG this package wrote, as its array (RGB, or one channel)."""
    with Image.open(path) as image:
        return np.asarray(image)


def write_tsv(final: Path, table: Any) -> None:
    with atomic_path(final) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
