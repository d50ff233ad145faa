"""Patch-reading throughput side by side: the decode limit, our reader, OpenSlide, tiatoolbox.

On the same slide and the same spot grid (the pipeline's own tissue and tiles stages, 100 µm
hexagonal spots, 224 px patches at 0.5 µm/px), each method delivers every spot's patch as an
RGB array, on one core and on all cores (CPU affinity set per measurement, each in a fresh
process, the slide file already in the page cache):

- ``limit``: read and decode every level-0 JPEG tile that some patch needs, once, and nothing
  else (no cropping, no copying) — the physical limit of reading;
- ``hespotex``: ``hespotex.patches.iter_patch_batches``, as the features stage runs it
  (reader threads = cores);
- ``openslide``: an ``openslide.OpenSlide.read_region`` loop, one call per patch;
- ``tiatoolbox``: a ``WSIReader.read_rect(..., resolution=0.5, units="mpp")`` loop.
The multi-core runs of the loops split the spots into contiguous shares over processes.

Slides: a 16,384² JPEG pyramid (256 px tiles, quality 90) of real H&E pixels (tiatoolbox's
stain-normalisation target, tiled) at 0.5 µm/px, and the real Aperio slide
``../shared/data/slides/CMU-1-Small-Region.svs`` (240 px tiles).

    .venv/bin/python benchmarks/read_throughput.py --work /tmp/hespotex-read

prints a Markdown table (also written to <work>/read_throughput.md).

``--ome-zarr`` compares the two OME-Zarr readers instead, on an OME-NGFF 0.4 (Zarr v2, the
version tiatoolbox reads) copy of the same pyramid's pixels (512² chunks of all three
channels, zarr's default lossless compression): ``hespotex`` (``OmeZarrBackend``, zarr
directly) against ``tiatoolbox`` (``NGFFWSIReader.read_rect``), written to
<work>/read_ome_zarr.md.

    .venv/bin/python benchmarks/read_throughput.py --work /tmp/hespotex-read --side 8192 --ome-zarr
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from timing import build_he_pyramid, run_child, write_table

REPO = Path(__file__).resolve().parents[1]
SVS = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
PATCH_UM, PATCH_MPP = 112.0, 0.5
METHODS = ("limit", "hespotex", "openslide", "tiatoolbox")
MIN_SECONDS = 3.0


def spot_grid(slide_path: Path, work: Path) -> np.ndarray:
    """Spot centres (level-0 px) from the pipeline's own tissue and tiles stages."""
    from hespotex.config import parse_config
    from hespotex.io.records import read_spots
    from hespotex.io.slide import open_slide
    from hespotex.paths import SlidePaths
    from hespotex.stages.tiles import run_tiles
    from hespotex.stages.tissue import run_tissue

    slide_id = slide_path.stem.replace(".", "-")
    config = parse_config(
        {"encoder": {"architecture": "stain-stats"}, "results": str(work / "results")}
    )
    with open_slide(slide_path, slide_id) as slide:
        run_tissue(slide, slide_id, config)
        run_tiles(slide, slide_id, config)
    spots = read_spots(SlidePaths(config.results, slide_id).spots)
    return spots[["x_px", "y_px"]].to_numpy(dtype=np.float64)


def needed_tiles(slide_path: Path, centres: np.ndarray) -> tuple[list[int], int]:
    """Indices of the level-0 tiles some patch touches (the plan's level is 0 on both
    slides), and the patch side in level-0 pixels."""
    import tifffile

    from hespotex.io.geometry import field_origins
    from hespotex.io.slide import open_slide

    with open_slide(slide_path, "limit") as slide:
        plan = slide.plan(PATCH_UM, PATCH_MPP)
        assert plan.level == 0
        origins = field_origins(centres, plan)
    with tifffile.TiffFile(slide_path) as tiff:
        page = tiff.pages[0]
        tile_width, tile_length = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tile_width)
        down = -(-page.imagelength // tile_length)
    tiles = set()
    for x, y in origins:
        for row in range(
            max(0, y // tile_length), min(down, (y + plan.level_px - 1) // tile_length + 1)
        ):
            for column in range(
                max(0, x // tile_width), min(across, (x + plan.level_px - 1) // tile_width + 1)
            ):
                tiles.add(row * across + column)
    return sorted(tiles), plan.level_px


def decode_tiles(slide_path: str, tiles: list[int]) -> int:
    import tifffile

    with tifffile.TiffFile(slide_path) as tiff, open(slide_path, "rb") as handle:
        page = tiff.pages[0]
        offsets, counts, tables = page.dataoffsets, page.databytecounts, page.jpegtables
        for index in tiles:
            handle.seek(offsets[index])
            page.decode(handle.read(counts[index]), index, jpegtables=tables)
    return len(tiles)


def openslide_loop(slide_path: str, centres: np.ndarray, side: int) -> int:
    import openslide

    slide = openslide.OpenSlide(slide_path)
    for x, y in centres:
        region = slide.read_region((int(x - side / 2), int(y - side / 2)), 0, (side, side))
        np.asarray(region.convert("RGB"))
    slide.close()
    return len(centres)


def tiatoolbox_loop(slide_path: str, centres: np.ndarray, side: int) -> int:
    from tiatoolbox.wsicore.wsireader import WSIReader

    from hespotex.io.slide import open_slide

    # tiatoolbox reads no mpp from a generic TIFF's resolution tags; give it ours.
    with open_slide(slide_path, "tiatoolbox") as slide:
        mpp = float(slide.mpp)
    reader = WSIReader.open(slide_path, mpp=(mpp, mpp))
    for x, y in centres:
        reader.read_rect(
            (int(x - side / 2), int(y - side / 2)),
            (224, 224),
            resolution=PATCH_MPP,
            units="mpp",
        )
    return len(centres)


def hespotex_reader(slide_path: str, centres: np.ndarray, workers: int) -> int:
    from hespotex.io.patches import iter_patch_batches
    from hespotex.io.slide import open_slide

    with open_slide(slide_path, "bench") as slide:
        plan = slide.plan(PATCH_UM, PATCH_MPP)
        return sum(len(batch) for batch in iter_patch_batches(slide, centres, plan, 64, workers))


def _share(job):
    method, slide_path, items, side = job
    if method == "limit":
        return decode_tiles(slide_path, items)
    if method == "openslide":
        return openslide_loop(slide_path, items, side)
    return tiatoolbox_loop(slide_path, items, side)


def child(method: str, cores: int, slide_path: str, data_path: str) -> None:
    """One measurement, in its own process pinned to ``cores`` CPUs; prints JSON."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    data = np.load(data_path)
    centres, tiles, side = data["centres"], data["tiles"].tolist(), int(data["side"])
    if method == "hespotex":
        work = lambda: hespotex_reader(slide_path, centres, cores)  # noqa: E731
    elif cores == 1:
        items = tiles if method == "limit" else centres
        work = lambda: _share((method, slide_path, items, side))  # noqa: E731
    else:
        items = tiles if method == "limit" else centres
        shares = [
            (method, slide_path, part, side)
            for part in (
                np.array_split(np.array(items), cores)
                if method != "limit"
                else [items[i::cores] for i in range(cores)]
            )
        ]
        pool = get_context("fork").Pool(cores)
        pool.map(abs, range(cores))
        work = lambda: sum(pool.map(_share, shares))  # noqa: E731
    work()  # warm: imports, slide handles, caches of the reader itself
    rounds, started = 0, time.perf_counter()
    while True:
        work()
        rounds += 1
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_SECONDS:
            break
    print(json.dumps({"seconds_per_round": elapsed / rounds, "rounds": rounds}))


def measure(method: str, cores: int, slide_path: Path, data_path: Path) -> float:
    arguments = [method, str(cores), str(slide_path), str(data_path)]
    return run_child(__file__, arguments)["seconds_per_round"]


def compare_ome_zarr(work: Path, pyramid: Path, core_counts: list[int]) -> None:
    """Patches/s of our OME-Zarr reader and tiatoolbox's on an OME-Zarr of ``pyramid``'s
    level-0 pixels, the same spots."""
    from hespotex.io.pyramids import write_ome_zarr
    from hespotex.io.slide import open_slide

    slide_path = work / f"{pyramid.stem}.ome.zarr"
    if not slide_path.exists():
        with open_slide(pyramid, "pyramid") as slide:
            pixels = slide.backend.read_region((0, 0), 0, slide.dimensions)
        write_ome_zarr(slide_path, pixels, PATCH_MPP, "0.4")
    centres = spot_grid(slide_path, work)
    data_path = work / f"{slide_path.name}.npz"
    np.savez(data_path, centres=centres, tiles=np.array([]), side=round(PATCH_UM / PATCH_MPP))
    for chunk in slide_path.rglob("*"):  # into the page cache for both readers alike
        if chunk.is_file():
            chunk.read_bytes()
    lines = [
        "| slide | spots | method | cores | patches/s | vs tiatoolbox, same cores |",
        "|---|---|---|---|---|---|",
    ]
    for cores in core_counts:
        rates = {
            method: len(centres) / measure(method, cores, slide_path, data_path)
            for method in ("hespotex", "tiatoolbox")
        }
        for method, rate in rates.items():
            lines.append(
                f"| {slide_path.name} (NGFF 0.4) | {len(centres):,} | {method} | {cores} | "
                f"{rate:,.0f} | {rate / rates['tiatoolbox']:.1f}× |"
            )
    write_table(work / "read_ome_zarr.md", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-read"))
    parser.add_argument("--side", type=int, default=16384, help="side of the JPEG pyramid")
    parser.add_argument("--ome-zarr", action="store_true", help="compare OME-Zarr readers")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, cores, slide_path, data_path = args.child
        child(method, int(cores), slide_path, data_path)
        return
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pyramid = work / f"he-{args.side}.tif"
    if not pyramid.exists():
        build_he_pyramid(pyramid, args.side, args.side // 32)
    all_cores = len(os.sched_getaffinity(0))
    core_counts = sorted({1, all_cores})
    if args.ome_zarr:
        compare_ome_zarr(work, pyramid, core_counts)
        return
    lines = [
        "| slide | spots | tiles needed | method | cores | patches/s | vs limit, same cores "
        "| vs tiatoolbox, same cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, slide_path in (
        (f"JPEG pyramid {args.side}² (real H&E pixels)", pyramid),
        ("CMU-1-Small-Region.svs", SVS),
    ):
        centres = spot_grid(slide_path, work)
        tiles, side = needed_tiles(slide_path, centres)
        data_path = work / f"{slide_path.stem}.npz"
        np.savez(data_path, centres=centres, tiles=np.array(tiles), side=side)
        slide_path.read_bytes()  # into the page cache for every method alike
        rates = {}
        for cores in core_counts:
            for method in METHODS:
                seconds = measure(method, cores, slide_path, data_path)
                rates[method, cores] = len(centres) / seconds
                print(
                    f"{name}: {method} on {cores} core(s): {rates[method, cores]:.0f} patches/s",
                    flush=True,
                )
        for cores in core_counts:
            for method in METHODS:
                rate = rates[method, cores]
                versus_limit = rate / rates["limit", cores]
                versus_tiatoolbox = rate / rates["tiatoolbox", cores]
                lines.append(
                    f"| {name} | {len(centres):,} | {len(tiles):,} | {method} | {cores} | "
                    f"{rate:,.0f} | {versus_limit:.2f} | {versus_tiatoolbox:.1f}× |"
                )
    write_table(work / "read_throughput.md", lines)


if __name__ == "__main__":
    main()
