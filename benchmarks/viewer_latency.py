"""The viewer's speed: time from `hespotex view` to the first slide drawn, and a Deep Zoom
tile's latency at every zoom level, down to full resolution.

After `make demo` (its results and config/demo.yaml), plus a TCGA-sized JPEG TIFF pyramid
(30,000 px square at 0.5 µm/px, real H&E pixels) added to the sheet:

- **first slide drawn**: `hespotex view` started as a user starts it; headless Chromium opens
  a demo slide's page as soon as the server answers; the clock stops when the page has drawn
  its spots over the slide and every tile in view has loaded (best of ``REPEATS`` starts).
- **tile latency**: a scripted zoom per slide, as OpenSeadragon asks for it: from the level
  where the slide fits the 1280 × 800 view down to full resolution, at each level the tiles
  that cover the view around the slide's centre, each asked once (not cached), one at a time.

    .venv/bin/python benchmarks/viewer_latency.py --work /tmp/hespotex-viewer

prints a Markdown table (also written to <work>/table.md) and saves the slide page as drawn to
<work>/viewer.png (the README's picture, `docs/images/viewer.jpg`, is that page saved as JPEG).
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from timing import free_port, tcga_sized_pyramid, write_table

from hespotex.config import read_sample_sheet

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
HESPOTEX = str(REPO / ".venv" / "bin" / "hespotex")
DEMO_SLIDES = ("demo-her2st-c3-40x", "CMU-1-svs", "CMU-1-dicom", "OS-1-ome")
VIEW_PX = (1280, 800)
TILE_PX = 254
REPEATS = 3


def start_viewer(config: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [HESPOTEX, "view", "--config", str(config), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def first_slide_drawn(config: Path, slide_id: str, screenshot: Path) -> float:
    """Seconds from starting `hespotex view` to the slide page drawn with its tiles loaded;
    the page as drawn saved to ``screenshot``."""
    from playwright.sync_api import Error, sync_playwright

    port = free_port()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": VIEW_PX[0], "height": VIEW_PX[1]})
        started = time.perf_counter()
        server = start_viewer(config, port)
        try:
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/slide/{slide_id}")
                    break
                except Error:
                    time.sleep(0.05)
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            page.wait_for_function("window.hespotex.viewer.world.getItemAt(0).getFullyLoaded()")
            seconds = time.perf_counter() - started
            page.screenshot(path=screenshot)
        finally:
            server.terminate()
            server.wait()
            browser.close()
    return seconds


def zoom_tiles(width: int, height: int) -> list[tuple[int, int, int]]:
    """(level, column, row) of the tiles a zoom from the whole slide to full resolution asks
    for around the slide's centre, level by level."""
    top = math.ceil(math.log2(max(width, height)))
    fit = top - max(0, math.floor(math.log2(max(width / VIEW_PX[0], height / VIEW_PX[1]))))
    tiles = []
    for level in range(fit, top + 1):
        scale = 2 ** (top - level)
        centre_x, centre_y = width / 2 / scale, height / 2 / scale
        columns = range(
            max(0, int((centre_x - VIEW_PX[0] / 2) // TILE_PX)),
            min(
                math.ceil(width / scale / TILE_PX), int((centre_x + VIEW_PX[0] / 2) // TILE_PX) + 1
            ),
        )
        rows = range(
            max(0, int((centre_y - VIEW_PX[1] / 2) // TILE_PX)),
            min(
                math.ceil(height / scale / TILE_PX), int((centre_y + VIEW_PX[1] / 2) // TILE_PX) + 1
            ),
        )
        tiles += [(level, column, row) for column in columns for row in rows]
    return tiles


def tile_latencies(port: int, slide_id: str, width: int, height: int) -> np.ndarray:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    seconds = []
    for level, column, row in zoom_tiles(width, height):
        started = time.perf_counter()
        connection.request("GET", f"/tiles/{slide_id}_files/{level}/{column}_{row}.jpeg")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{slide_id} tile {level}/{column}_{row}: HTTP {response.status}")
        seconds.append(time.perf_counter() - started)
    connection.close()
    return np.array(seconds)


def slide_size(slide_id: str, path: str) -> tuple[int, int]:
    from hespotex.io.slide import open_slide

    with open_slide(path, slide_id) as slide:
        return slide.dimensions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pyramid = tcga_sized_pyramid(work)
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    sheet_rows = (REPO / demo["samples"]).read_text().splitlines()
    sheet = work / "samples.tsv"
    sheet.write_text("\n".join([*sheet_rows, f"tcga-sized\t{pyramid}\t"]) + "\n")
    config = work / "config.yaml"
    # The viewer runs in the checkout, where the demo config's other paths lead.
    config.write_text(yaml.safe_dump({**demo, "samples": str(sheet)}))
    screenshot = work / "viewer.png"
    drawn = [first_slide_drawn(config, DEMO_SLIDES[0], screenshot) for _ in range(REPEATS)]
    paths = {slide_id: row.path for slide_id, row in read_sample_sheet(sheet).items()}
    port = free_port()
    server = start_viewer(config, port)
    rows = [
        f"`hespotex view` to the first slide drawn ({DEMO_SLIDES[0]}, tiles loaded): "
        f"best {min(drawn):.2f} s of {REPEATS} (all: {', '.join(f'{s:.2f}' for s in drawn)})",
        "",
        "| slide | size (px) | tiles | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|---|",
    ]
    try:
        time.sleep(3)
        for slide_id in (*DEMO_SLIDES, "tcga-sized"):
            path = paths[slide_id]
            if not os.path.isabs(path):
                path = str(REPO / path)
            width, height = slide_size(slide_id, path)
            latency = tile_latencies(port, slide_id, width, height) * 1000
            rows.append(
                f"| {slide_id} | {width:,} × {height:,} | {len(latency)} | "
                f"{np.percentile(latency, 50):.1f} | {np.percentile(latency, 99):.1f} | "
                f"{latency.max():.1f} |"
            )
    finally:
        server.terminate()
        server.wait()
    rows.append("")
    rows.append(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    write_table(work / "table.md", rows)


if __name__ == "__main__":
    main()
