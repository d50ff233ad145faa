"""Weights are hashed once: the checksum is remembered by path, size and modification time."""

import hashlib
import os

from hespotex.io.checksum import CACHE_DIR_VARIABLE, cached_sha256, file_sha256


def test_a_file_is_hashed_once_and_again_only_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"first version of the weights")
    first = cached_sha256(weights)
    assert first == hashlib.sha256(b"first version of the weights").hexdigest()
    # Same size and modification time: the remembered checksum, without reading the file
    # (a different content of the same length shows it was not read).
    stat = weights.stat()
    weights.write_bytes(b"other version of the weights")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cached_sha256(weights) == first
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cached_sha256(weights) == file_sha256(weights) != first
    entries = list((tmp_path / "cache" / "sha256").iterdir())
    assert len(entries) == 1, "the stale entry is replaced"
    assert entries[0].read_text().endswith(file_sha256(weights))


def test_an_unwritable_cache_only_costs_the_hashing(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(blocked))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"weights")
    assert cached_sha256(weights) == hashlib.sha256(b"weights").hexdigest()
