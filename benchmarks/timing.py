"""What the benchmarks share: a command's wall time and peak RSS, GPU utilisation while it
runs, writing their tables, and building test slides of real H&E pixels."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Runs the command as its only child, so the children's peak RSS is the command's own (what
# `/usr/bin/time -v` reports, without needing it: the GPU machines lack it).
_MEASURE = r"""
import json, resource, subprocess, sys, time
started = time.perf_counter()
result = subprocess.run(sys.argv[1:])
# On a line of its own, whatever the command left unterminated on stderr (progress bars).
print("\n" + json.dumps({
    "returncode": result.returncode,
    "seconds": time.perf_counter() - started,
    "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}), file=sys.stderr)
"""


def run_timed(command: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of ``command``; a failing command ends the
    benchmark with its output."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )
    *command_stderr, last_line = result.stderr.rstrip("\n").split("\n")
    try:
        measured = json.loads(last_line)
    except json.JSONDecodeError:
        measured = {"returncode": None}
    if measured["returncode"] != 0:
        output = "\n".join(command_stderr)
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{output[-3000:]}")
    return measured["seconds"], measured["peak_kb"] / 1024, result.stdout


def run_child(script: str, arguments: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``script --child ARGUMENTS`` (a benchmark measuring itself in a fresh process) and
    return the JSON object its last line of stdout prints; a failing child ends the benchmark
    with its stderr."""
    result = subprocess.run(
        [sys.executable, script, "--child", *arguments],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"{' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_he_pyramid(path: Path, side: int, margin: int, tile_png: Path | None = None) -> None:
    """A ``side``² JPEG TIFF pyramid at 0.5 µm/px: real H&E pixels (tiatoolbox's stain
    normalisation target, or ``tile_png`` where tiatoolbox is not installed) tiled over all
    but a ``margin`` of background."""
    import numpy as np
    from PIL import Image

    from hespotex.io.pyramids import write_pyramid_tiff

    if tile_png is None:
        from tiatoolbox.data import stain_norm_target

        tile = stain_norm_target()
    else:
        tile = np.asarray(Image.open(tile_png).convert("RGB"))
    image = np.full((side, side, 3), 243, dtype=np.uint8)
    inner = side - 2 * margin
    reps = -(-inner // min(tile.shape[:2]))
    image[margin : side - margin, margin : side - margin] = np.tile(tile, (reps, reps, 1))[
        :inner, :inner
    ]
    write_pyramid_tiff(path, image, 0.5)


# A TCGA-sized slide: a 20x scan of 15 × 15 mm at 0.5 µm/px, tissue to within 0.5 mm of the edge.
TCGA_SIDE_PX = 30000
TCGA_MARGIN_PX = 1000


def tcga_sized_pyramid(work: Path) -> Path:
    """``<work>/tcga-sized.tif``, built once (``build_he_pyramid``), shared by benchmarks."""
    path = work / "tcga-sized.tif"
    if not path.exists():
        build_he_pyramid(path, TCGA_SIDE_PX, TCGA_MARGIN_PX)
    return path


def free_port() -> int:
    """A port free on localhost now, for a server a benchmark starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def best_of(function, repeats: int) -> float:
    """The fastest of ``repeats`` runs of ``function``, in seconds (the least disturbed by
    other work)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def write_table(path: Path, lines: list[str]) -> None:
    """The Markdown table to ``path`` and to the terminal."""
    table = "\n".join(lines)
    Path(path).write_text(table + "\n")
    print(table)


class GpuBusy:
    """`nvidia-smi` utilisation samples (every 200 ms) of a run; empty without a GPU."""

    def __init__(self, path: Path):
        self.path = path
        self.device = None
        if shutil.which("nvidia-smi"):
            self.device = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()

    def samples(self) -> list[float]:
        values = []
        for line in self.path.read_text().splitlines() if self.path.exists() else []:
            try:
                values.append(float(line.split(",")[0]))
            except ValueError:
                continue
        return values

    def steady(self) -> list[float]:
        """The samples from the first busy one to the last: the run's steady part."""
        busy = self.samples()
        first = next((i for i, value in enumerate(busy) if value > 0), 0)
        last = len(busy) - next((i for i, value in enumerate(reversed(busy)) if value > 0), 0)
        return busy[first:last]

    def summary(self) -> str:
        if self.device is None:
            return "not measured (no nvidia-smi)"
        steady, whole = self.steady() or [0.0], self.samples() or [0.0]
        return (
            f"{sum(steady) / len(steady):.0f} % steady, {sum(whole) / len(whole):.0f} % over "
            "the whole run"
        )


@contextmanager
def utilisation_sampler(path: Path) -> Iterator[GpuBusy]:
    """Sample GPU utilisation into ``path`` while the block runs (nothing without a GPU)."""
    busy = GpuBusy(path)
    if busy.device is None:
        yield busy
        return
    with path.open("w") as sink:
        sampler = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ],
            stdout=sink,
        )
        try:
            yield busy
        finally:
            sampler.terminate()
            sampler.wait()
