"""What the benchmarks share: a command's wall time and peak RSS, and writing their tables."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def run_timed(command: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB (from `/usr/bin/time -v`) and stdout of ``command``; a
    failing command ends the benchmark with its output."""
    result = subprocess.run(
        ["/usr/bin/time", "-v", *command], capture_output=True, text=True, cwd=cwd, check=False
    )
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)[1])
    elapsed = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    hours, minutes, seconds = (float(part) if part else 0.0 for part in elapsed.groups())
    return hours * 3600 + minutes * 60 + seconds, peak_kb / 1024, result.stdout


def write_table(path: Path, lines: list[str]) -> None:
    """The Markdown table to ``path`` and to the terminal."""
    table = "\n".join(lines)
    Path(path).write_text(table + "\n")
    print(table)
