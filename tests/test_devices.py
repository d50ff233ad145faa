"""One features job per GPU on a machine with several: each job's process claims a GPU of its
own, tested on the CPU (which job gets which device index needs no GPU)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from hespotex.encoder import devices
from hespotex.encoder.devices import claim_slot, pick_device
from hespotex.errors import ConfigError

HOLD_AND_REPORT = """
import sys, time
from pathlib import Path
from hespotex.encoder.devices import claim_slot
index, handle = claim_slot(int(sys.argv[2]), Path(sys.argv[1]))
print(index, flush=True)
time.sleep(float(sys.argv[3]))
"""


def claimers(folder, count: int, processes: int, hold_seconds: float) -> list[subprocess.Popen]:
    command = [sys.executable, "-c", HOLD_AND_REPORT, str(folder), str(count), str(hold_seconds)]
    return [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]


def test_jobs_at_once_each_claim_a_gpu_of_their_own(tmp_path):
    jobs = claimers(tmp_path, count=3, processes=3, hold_seconds=1.5)
    indices = sorted(int(job.stdout.readline()) for job in jobs)
    assert indices == [0, 1, 2]
    for job in jobs:
        job.wait(timeout=30)


def test_a_job_waits_for_a_gpu_and_takes_the_one_freed(tmp_path):
    short, long = claimers(tmp_path, 2, 1, 1.0) + claimers(tmp_path, 2, 1, 6.0)
    short_index, long_index = int(short.stdout.readline()), int(long.stdout.readline())
    assert {short_index, long_index} == {0, 1}
    started = time.monotonic()
    (late,) = claimers(tmp_path, 2, 1, 0.0)
    assert int(late.stdout.readline()) == short_index, "the GPU the finished job freed"
    assert time.monotonic() - started >= 0.3, "it waited while both were held"
    for job in (short, late):
        job.wait(timeout=30)
    long.kill()
    long.wait()


def test_a_killed_job_frees_its_gpu(tmp_path):
    (holder,) = claimers(tmp_path, 1, 1, 60.0)
    assert int(holder.stdout.readline()) == 0
    holder.kill()
    holder.wait()
    index, handle = claim_slot(1, tmp_path)
    assert index == 0
    handle.close()


def test_the_device_is_the_claimed_gpu_where_several_are_visible(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(devices, "lock_folder", lambda: tmp_path)
    monkeypatch.setattr(devices, "_CLAIMED", [])
    (other,) = claimers(tmp_path, 4, 1, 10.0)
    taken = int(other.stdout.readline())
    device = pick_device("auto", claim=True)
    assert device.type == "cuda" and device.index != taken
    assert pick_device("cuda", claim=True) == device, "one claim per process"
    assert pick_device("auto") == torch.device("cuda"), "decoding claims nothing"
    assert pick_device("cpu") == torch.device("cpu")
    other.kill()
    other.wait()


def test_a_lock_folder_of_someone_else_or_a_planted_link_is_refused(tmp_path):
    folder = tmp_path / "claims"
    folder.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (folder / "gpu-0.lock").symlink_to(target)
    with pytest.raises(OSError):
        claim_slot(1, folder)
    assert target.read_text() == "keep me"
    link = tmp_path / "link-to-claims"
    link.symlink_to(folder)
    with pytest.raises(ConfigError, match="not a folder of this user's"):
        claim_slot(1, link)


def test_one_visible_gpu_is_simply_cuda_and_none_is_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "_CLAIMED", [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        pick_device("cuda")
