"""All of TCGA from IDC's installed index: how long the sheet takes, how many slides and TB,
diagnostic against frozen, and how long moving the bytes takes beside encoding them.

Runs `hespotex sheet idc` for every TCGA collection of the index, once per kind, timed as a
user runs it (a fresh process), then sums the series sizes. The transfer times are the TB over
a link of 1 and 10 Gb/s at full rate; the encoding time is RESULTS's projection for TCGA's
diagnostic slides on one H200 (≈ 7,800 patches/s: 7.1 GPU-hours, "Feature extraction on the
GPU"), so a user sees which bounds the run.

    .venv/bin/python benchmarks/tcga_sheet.py --work /tmp/hespotex-tcga-sheet

prints a Markdown table (also written to <work>/table.md).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import pandas as pd
from timing import write_table

from hespotex.io.cohort_sheets import idc_collections, idc_sizes_mb

REPO = Path(__file__).resolve().parents[1]
HESPOTEX = str(REPO / ".venv" / "bin" / "hespotex")
ENCODING_GPU_HOURS_DIAGNOSTIC = 7.1
BITS_PER_BYTE = 8


def transfer_hours(terabytes: float, gigabits_per_second: float) -> float:
    return terabytes * 1e12 * BITS_PER_BYTE / (gigabits_per_second * 1e9) / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    collections = [c for c in idc_collections() if c.startswith("tcga_")]
    rows = [
        f"{len(collections)} TCGA collections in IDC's index",
        "",
        "| kind | slides | patients | TB | sheet (s) | transfer at 1 Gb/s (h) | at 10 Gb/s (h) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("diagnostic", "frozen", "all"):
        sheet_path = work / f"tcga-{kind}.tsv"
        started = time.perf_counter()
        command = [HESPOTEX, "sheet", "idc", "--kind", kind, "--out", str(sheet_path)]
        subprocess.run(
            [*command, "--collection", *collections],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - started
        sheet = pd.read_csv(sheet_path, sep="\t", dtype=str)
        terabytes = idc_sizes_mb(sheet, collections).sum() / 1e6
        rows.append(
            f"| {kind} | {len(sheet):,} | {sheet['patient_id'].nunique():,} | {terabytes:.2f} | "
            f"{seconds:.1f} | {transfer_hours(terabytes, 1):.0f} | "
            f"{transfer_hours(terabytes, 10):.1f} |"
        )
    rows += [
        "",
        f"Encoding TCGA's diagnostic slides on one H200 (RESULTS's projection): "
        f"{ENCODING_GPU_HOURS_DIAGNOSTIC} GPU-hours.",
    ]
    write_table(work / "table.md", rows)


if __name__ == "__main__":
    main()
