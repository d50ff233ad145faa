"""A slide with its resolution resolved: the object every stage reads through.

``open_slide`` opens the file with the backend ``open_backend`` picks, resolves its µm per
pixel (the sample sheet's value wins over the file's; a slide with neither is an error that
says how to fix it) and returns a ``Slide``. Reads are windowed and planned in microns
(``io.geometry``'s ``ReadPlan``), so nothing here loads a whole level unless asked for a region
that large.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from hespotex.errors import (
    InvalidMppError,
    MissingMppError,
    ResolutionTooCoarseError,
    SlideTooSmallError,
)
from hespotex.io.backends import SlideBackend, open_backend
from hespotex.io.geometry import (
    ReadPlan,
    best_level,
    field_origins,
    level0_location,
    plan_read,
    resample_field,
)
from hespotex.units import Mpp, SlidePixels, is_plausible_mpp

logger = logging.getLogger(__name__)


class Slide:
    """A slide with its resolution resolved; the object every stage reads through."""

    def __init__(self, backend: SlideBackend, mpp: Mpp, mpp_source: str, source: str = ""):
        self.backend = backend
        self.path = backend.path
        # Where the slide comes from, as the sheet says: its path, or the URL it was fetched
        # from into ``path``. Records and messages name it.
        self.source = source or str(backend.path)
        self.mpp = mpp
        self.mpp_source = mpp_source

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    @property
    def dimensions(self) -> tuple[int, int]:
        return tuple(self.backend.level_dimensions[0])

    @property
    def reader(self) -> str:
        return self.backend.name

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.backend.level_downsamples[level]

    @property
    def level_mpps(self) -> list[float]:
        return [self.level_mpp(level) for level in range(len(self.backend.level_downsamples))]

    def best_level(self, target_mpp: float) -> int:
        return best_level(self.level_mpps, target_mpp)

    def plan(self, field_um: float, target_mpp: float) -> ReadPlan:
        """How to read a ``field_um`` square at ``target_mpp`` (``io.geometry``)."""
        return plan_read(self.level_mpps, self.backend.level_downsamples, field_um, target_mpp)

    def read_field(self, center: tuple[SlidePixels, SlidePixels], plan: ReadPlan) -> np.ndarray:
        """The square field centred on a level-0 point, resampled to ``plan.output_px``."""
        origin = field_origins(np.array([center]), plan)[0]
        region = self.backend.read_region(
            level0_location(origin, plan.downsample), plan.level, (plan.level_px, plan.level_px)
        )
        return resample_field(region, plan)

    def read_overview(self, target_mpp: float, band_px: int = 2048) -> tuple[np.ndarray, float]:
        """The whole slide at about ``target_mpp``, read in horizontal bands to bound memory.

        Returns the image and its downsample from level 0 (level-0 pixels per image pixel).
        """
        level = self.best_level(target_mpp)
        level_width, level_height = self.backend.level_dimensions[level]
        level_downsample = self.backend.level_downsamples[level]
        shrink = max(1.0, target_mpp / self.level_mpp(level))
        out_width = max(1, round(level_width / shrink))
        out_height = max(1, round(level_height / shrink))
        bands = []
        for top in range(0, level_height, band_px):
            rows = min(band_px, level_height - top)
            band = self.backend.read_region(
                (0, round(top * level_downsample)), level, (level_width, rows)
            )
            band_top = round(top / shrink)
            band_bottom = round((top + rows) / shrink) if top + rows < level_height else out_height
            if band_bottom > band_top:
                bands.append(
                    np.asarray(
                        Image.fromarray(band).resize(
                            (out_width, band_bottom - band_top), Image.Resampling.BOX
                        )
                    )
                )
        overview = np.concatenate(bands, axis=0)
        return overview, level_width * level_downsample / out_width


def check_patch_geometry(slide: Slide, patch_um: float, patch_mpp: float, max_upsampling: float):
    """Refuse slides that cannot yield a meaningful patch: smaller than one patch, or scanned
    so coarsely that patches would be mostly interpolation."""
    width_um, height_um = (side * slide.mpp for side in slide.dimensions)
    if min(width_um, height_um) < patch_um:
        raise SlideTooSmallError(
            slide.path,
            f"the slide ({width_um:.0f} × {height_um:.0f} µm) is smaller than one "
            f"{patch_um:.0f} µm patch",
        )
    if slide.level_mpp(0) > patch_mpp * max_upsampling:
        raise ResolutionTooCoarseError(
            slide.path,
            f"the slide's finest resolution, {slide.level_mpp(0):.3g} µm/px, is more than "
            f"{max_upsampling:g}× coarser than the {patch_mpp:g} µm/px patches asked for "
            "(features.max_upsampling); check its mpp, or scan it at higher magnification",
        )


def resolve_mpp(backend: SlideBackend, sheet_mpp: float | None, slide_id: str) -> tuple[Mpp, str]:
    """The sheet's mpp wins over the file's; a slide with neither is an error that says how
    to fix it."""
    if sheet_mpp is not None:
        mpp, source = float(sheet_mpp), "sample sheet"
    elif backend.metadata_mpp is not None:
        mpp, source = float(backend.metadata_mpp), f"slide metadata ({backend.name})"
    else:
        raise MissingMppError(backend.path, slide_id)
    if not is_plausible_mpp(mpp):
        raise InvalidMppError(
            backend.path,
            f"resolution {mpp} µm/px from the {source} is outside (0, 100]; give the right "
            "value in the sample sheet's `mpp` column",
        )
    return Mpp(mpp), source


def open_slide(
    path: Path | str, slide_id: str, sheet_mpp: float | None = None, source: str = ""
) -> Slide:
    backend = open_backend(Path(path))
    try:
        mpp, mpp_source = resolve_mpp(backend, sheet_mpp, slide_id)
    except Exception:
        backend.close()
        raise
    logger.info(
        "opened %s with %s: %d level(s), level 0 %s px, %.4f µm/px from the %s",
        source or path,
        backend.name,
        len(backend.level_dimensions),
        backend.level_dimensions[0],
        mpp,
        mpp_source,
    )
    return Slide(backend, mpp, mpp_source, source)
