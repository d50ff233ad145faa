"""The demo cohort: pyramidal slides and training sections built from real H&E and real ST.

Sources (read from ``../shared/data``, never copied into the repository): the HER2ST sections
(Andersson et al., Nat Commun 2021), OpenSlide's CMU-1 test slide, and tiatoolbox's
stain-normalisation target tile. Slides are written as tiled JPEG TIFF pyramids with tifffile
(reduced levels with ``subfiletype=1``), one without any resolution tag so the sample sheet
must give its ``mpp``.

``her2st/`` (what `make demo` trains on) holds the four real HER2ST sections, raw counts of
≈15,000 genes at their own ST spots, with three *planted* genes added as a check:
``PLANTED_HEMATOXYLIN`` follows the haematoxylin density of each spot's patch (nuclei),
``PLANTED_EOSIN`` the eosin density (stroma), ``PLANTED_DARKNESS`` the optical density; each
smoothed over neighbours, with noise. A model that learns from images should draw the planted
genes where those tissues are, beside the real genes.

``planted/`` (the tests' fast checkpoint) holds two halves of HER2ST B4 and HER2ST C3 with
spots on the pipeline's own grid and only planted and ``NOISE_*`` genes (no signal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from PIL import Image
from scipy import sparse

from hespotex.config import GridConfig, TissueConfig
from hespotex.demo.planted_artifacts import planted_slide
from hespotex.errors import InputDataError
from hespotex.io.atomic import atomic_path, write_tsv
from hespotex.io.backends import ArraySlide
from hespotex.io.pyramids import write_pyramid_tiff
from hespotex.io.slide import Slide
from hespotex.network.spot_graph import knn_edges
from hespotex.stages.spot_qc import footprint_fraction
from hespotex.stages.tiles import lattice_um
from hespotex.stages.tissue import tissue_mask

logger = logging.getLogger(__name__)

HER2ST_MPP = 0.69
PATCH_UM = 112.0
PLANTED_GENES = ("PLANTED_HEMATOXYLIN", "PLANTED_EOSIN", "PLANTED_DARKNESS")
N_NOISE_GENES = 29
HER2ST_SECTIONS = ("B4", "C2", "C3", "C4")
# A planted gene's counts as a share of its spot's library (≈ 1,000 CPM, a common gene's level).
PLANTED_SHARE = 1e-3
SEED = 7


def read_image(path: Path) -> np.ndarray:
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def resample(rgb: np.ndarray, from_mpp: float, to_mpp: float) -> np.ndarray:
    scale = from_mpp / to_mpp
    size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def her2st_image(shared: Path, section: str) -> Path:
    return next((shared / "her2st" / section).glob("*.jpg"))


def mosaic(shared: Path) -> np.ndarray:
    """Real H&E pieces (tiatoolbox's target tile, CMU-1 crops) on glass, at 0.5 µm/px."""
    import openslide
    from tiatoolbox.data import stain_norm_target

    canvas = np.full((3200, 3600, 3), 242, dtype=np.uint8)
    target = stain_norm_target()
    canvas[200:1200, 200:1200] = target
    canvas[1700:2700, 2300:3300] = np.rot90(target).copy()
    with openslide.OpenSlide(str(shared / "slides" / "CMU-1-Small-Region.svs")) as cmu:
        piece = np.asarray(cmu.read_region((200, 800), 0, (1500, 1300)).convert("RGB"))
    canvas[1600:2900, 300:1800] = piece
    return canvas


@dataclass(frozen=True)
class DemoSlide:
    slide_id: str
    file_name: str
    sheet_mpp: float | None


DEMO_SLIDES = (
    DemoSlide("demo-her2st-c3-40x", "demo-her2st-c3-40x.tif", None),
    DemoSlide("demo-her2st-c4-nores", "demo-her2st-c4-nores.tif", 0.5),
    DemoSlide("demo-mosaic-20x", "demo-mosaic-20x.tif", None),
    DemoSlide("demo-her2st-b4-inked", "demo-her2st-b4-inked.tif", None),
)
# Where the inked demo slide's marker goes (``planted_artifacts``' generator's seed).
INK_SEED = 3


def build_slides(out: Path, shared: Path) -> None:
    slides = out / "slides"
    c3 = read_image(her2st_image(shared, "C3"))[2200:5000, 4200:7200]
    write_pyramid_tiff(slides / DEMO_SLIDES[0].file_name, resample(c3, HER2ST_MPP, 0.25), 0.25)
    c4 = read_image(her2st_image(shared, "C4"))[1800:5200, 4000:7600]
    write_pyramid_tiff(slides / DEMO_SLIDES[1].file_name, resample(c4, HER2ST_MPP, 0.5), None)
    write_pyramid_tiff(slides / DEMO_SLIDES[2].file_name, mosaic(shared), 0.5, "INCH")
    # A whole section with a marker ring around it, a stroke across it and a dot on it, as
    # archive slides have: quality control keeps the ink out of the map.
    b4 = resample(read_image(her2st_image(shared, "B4")), HER2ST_MPP, 1.0)
    inked = planted_slide(b4, 1.0, INK_SEED, kinds=("ink",)).image
    write_pyramid_tiff(slides / DEMO_SLIDES[3].file_name, resample(inked, 1.0, 0.5), 0.5)


def patch_statistics(slide: Slide, centres_px: np.ndarray) -> np.ndarray:
    """Per spot: mean haematoxylin, mean eosin and mean optical density of its patch."""
    from skimage.color import rgb2hed

    plan = slide.plan(PATCH_UM, 0.5)
    rows = []
    for x, y in centres_px:
        patch = slide.read_field((x, y), plan)
        hed = rgb2hed(patch)
        density = -np.log(np.clip(patch.astype(np.float64) / 255.0, 1e-3, 1.0)).mean()
        rows.append((hed[..., 0].mean(), hed[..., 1].mean(), density))
    return np.asarray(rows)


def planted_signal(statistics: np.ndarray, centres_px: np.ndarray, rng) -> np.ndarray:
    """Per spot and planted gene: its patch statistic (standardised within the section),
    half of it smoothed over the spot's neighbours, plus noise."""
    standard = (statistics - statistics.mean(0)) / statistics.std(0)
    edges = knn_edges(centres_px, 6, self_loops=True)
    smoothed = np.zeros_like(standard)
    np.add.at(smoothed, edges[1], standard[edges[0]])
    smoothed /= np.bincount(edges[1], minlength=len(standard))[:, None]
    return 0.5 * standard + 0.5 * smoothed + rng.normal(0, 0.3, standard.shape)


def plant_counts(statistics: np.ndarray, centres_px: np.ndarray, rng) -> pd.DataFrame:
    signal = planted_signal(statistics, centres_px, rng)
    n_spots = len(centres_px)
    library = rng.lognormal(0, 0.2, n_spots)[:, None]
    planted = rng.poisson(40 * library * np.exp(0.9 * signal))
    noise_rates = rng.lognormal(2.5, 0.8, N_NOISE_GENES)
    noise = rng.poisson(library * noise_rates[None, :] * rng.lognormal(0, 0.3, (n_spots, 1)))
    names = [*PLANTED_GENES, *(f"NOISE_{index:02d}" for index in range(N_NOISE_GENES))]
    return pd.DataFrame(np.concatenate([planted, noise], axis=1), columns=names)


def her2st_slide(shared: Path, section: str) -> Slide:
    image_path = her2st_image(shared, section).resolve()
    return Slide(ArraySlide(read_image(image_path), image_path), HER2ST_MPP, "demo")


def planted_section(shared: Path, section: str, rng) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A HER2ST section's image, spots on the pipeline's grid over its tissue, and counts
    planted from each spot's patch."""
    slide = her2st_slide(shared, section)
    overview, downsample = slide.read_overview(8.0)
    mask = tissue_mask(overview, HER2ST_MPP * downsample, TissueConfig())
    width, height = slide.dimensions
    centres_um = lattice_um(width * HER2ST_MPP, height * HER2ST_MPP, GridConfig())
    fraction = footprint_fraction(mask, HER2ST_MPP * downsample, centres_um, PATCH_UM)
    centres_px = centres_um[fraction >= 0.8] / HER2ST_MPP
    counts = plant_counts(patch_statistics(slide, centres_px), centres_px, rng)
    counts.index = [f"s{index:05d}" for index in range(len(counts))]
    spots = pd.DataFrame(
        {"spot_id": counts.index, "pixel_x": centres_px[:, 0], "pixel_y": centres_px[:, 1]}
    )
    return slide.path, counts, spots


def write_sections(
    folder: Path, sheet: str, sections: list[tuple[str, Path, pd.DataFrame, pd.DataFrame]]
) -> None:
    """Each section's counts and spots TSVs, and a sections sheet listing them."""
    rows = []
    for section_id, image_path, counts, spots in sections:
        with atomic_path(folder / f"{section_id}.counts.tsv") as tmp:
            counts.to_csv(tmp, sep="\t")
        write_tsv(folder / f"{section_id}.spots.tsv", spots)
        rows.append(
            {
                "section_id": section_id,
                "image": str(image_path),
                "counts": f"{section_id}.counts.tsv",
                "spots": f"{section_id}.spots.tsv",
                "mpp": HER2ST_MPP,
            }
        )
    write_tsv(folder / sheet, pd.DataFrame(rows))


def build_planted(out: Path, shared: Path) -> None:
    """``planted/``: two sections of HER2ST B4 (left and right half) in ``sections.tsv``, one
    to train, one to choose the epoch, and HER2ST C3 alone in ``heldout.tsv`` to score what
    neither chose; their genes are only planted ones and noise (small and fast: the tests'
    checkpoint)."""
    rng = np.random.default_rng(SEED)
    image_path, counts, spots = planted_section(shared, "B4", rng)
    left = (spots["pixel_x"] < spots["pixel_x"].median()).to_numpy()
    folder = out / "planted"
    write_sections(
        folder,
        "sections.tsv",
        [
            ("b4-left", image_path, counts[left], spots[left]),
            ("b4-right", image_path, counts[~left], spots[~left]),
        ],
    )
    write_sections(folder, "heldout.tsv", [("c3", *planted_section(shared, "C3", rng))])
    logger.info(
        "planted sections: %d + %d spots, genes %s + %d noise; held out: C3",
        left.sum(),
        (~left).sum(),
        ", ".join(PLANTED_GENES),
        N_NOISE_GENES,
    )


def her2st_with_planted_genes(shared: Path, section: str, rng) -> ad.AnnData:
    """A real HER2ST section (its raw counts of ≈15,000 genes at its own ST spots) with the
    planted genes added as a check: each spot's planted counts are a share of its own library,
    so their CPM follows the patch content and not the sequencing depth."""
    folder = shared / "her2st" / section
    counts = pd.read_csv(folder / "counts.tsv.gz", sep="\t", index_col=0)
    spots = pd.read_csv(folder / "spots.tsv", sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    centres_px = spots.loc[counts.index, ["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    signal = planted_signal(
        patch_statistics(her2st_slide(shared, section), centres_px), centres_px, rng
    )
    library = counts.sum(axis=1).to_numpy()[:, None]
    planted = rng.poisson(library * PLANTED_SHARE * np.exp(0.9 * signal))
    table = pd.concat(
        [counts, pd.DataFrame(planted, index=counts.index, columns=PLANTED_GENES)], axis=1
    )
    adata = ad.AnnData(sparse.csr_matrix(table.to_numpy(dtype=np.float32)))
    adata.obs_names = table.index
    adata.var_names = table.columns
    adata.obsm["spatial"] = centres_px
    return adata


def build_her2st(out: Path, shared: Path) -> None:
    """``her2st/sections.tsv``: the four real HER2ST sections (raw counts, their own spots and
    H&E images) with the planted genes beside the real ones: what `make demo` trains on."""
    rng = np.random.default_rng(SEED)
    folder = out / "her2st"
    rows = []
    for section in HER2ST_SECTIONS:
        adata = her2st_with_planted_genes(shared, section, rng)
        with atomic_path(folder / f"{section}.h5ad") as tmp:
            adata.write_h5ad(tmp)
        rows.append(
            {
                "section_id": section,
                "layout": "anndata",
                "counts": f"{section}.h5ad",
                "image": str(her2st_image(shared, section).resolve()),
                "mpp": HER2ST_MPP,
            }
        )
        logger.info(
            "HER2ST %s: %d spots × %d genes (planted: %s)",
            section,
            *adata.shape,
            ", ".join(PLANTED_GENES),
        )
    write_tsv(folder / "sections.tsv", pd.DataFrame(rows))


def build_demo(out: Path, shared: Path) -> None:
    if not (shared / "her2st").is_dir():
        raise InputDataError(shared, "the shared real data folder (HER2ST, slides) is missing")
    build_slides(out, shared)
    build_her2st(out, shared)
    logger.info("demo data in %s", out)
