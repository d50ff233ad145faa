"""What the viewer shows, read from a run's files: the cohort table, and per slide its genes
with their validation scores, its spots (a gene's values, QC decisions and scores), the spots
quality control dropped and the tissue outline, all in level-0 pixels of the slide.

Only slides of the sample sheet are known, by their id; nothing is read from a path a request
names. A slide's expression is read one gene at a time (``expression.h5ad`` opened backed), so
a 5,457-gene slide costs one column per request, not the whole matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hespotex.config import PipelineConfig, SampleRow, read_sample_sheet
from hespotex.errors import SlideError
from hespotex.io.records import QC_COLUMNS, TissueRecord, read_mask, read_spots
from hespotex.io.slide import open_slide
from hespotex.outputs.cohort import slide_status
from hespotex.paths import CohortPaths, SlidePaths
from hespotex.viewer.deepzoom import TileSource
from hespotex.viewer.recent import Recent

# The colour scale spans these percentiles of a gene's values on the slide, so one extreme
# spot does not wash out the map.
COLOUR_RANGE_PERCENTILES = (2, 98)
# Vertices the tissue outline may be off by, in mask pixels, once simplified.
OUTLINE_TOLERANCE_PX = 1.5
OUTLINE_MIN_POINTS = 8
# The served model's held-out score first (maps decoded before serving lack it).
SCORE_ORDER = ("served_pearson", "cv_pearson", "validation_pearson")


class UnknownError(LookupError):
    """A slide or gene the results do not have: answered as 404, naming what is missing."""


def _json_number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


@dataclass(frozen=True)
class SlideView:
    """One finished slide: its record, spots table (``obs``) and the open expression file."""

    slide_id: str
    record: TissueRecord
    obs: pd.DataFrame
    centres_px: np.ndarray
    genes: pd.DataFrame
    expression: object
    spacing_px: float
    layout: str

    def gene_values(self, gene: str) -> np.ndarray:
        if gene not in self.genes.index:
            raise UnknownError(f"{self.slide_id} has no gene {gene!r}")
        column = self.genes.index.get_loc(gene)
        values = self.expression.X[:, column]
        return np.asarray(values.toarray() if hasattr(values, "toarray") else values).ravel()


class Results:
    """The run's results as the viewer serves them; opened slides and expression files are
    kept for the last ``open_slides`` slides asked for (``Recent``)."""

    def __init__(self, config: PipelineConfig, open_slides: int = 4):
        self.config = config
        self.samples: dict[str, SampleRow] = read_sample_sheet(config.samples)
        self._views: Recent[SlideView] = Recent(open_slides)
        self._tiles: Recent[TileSource] = Recent(open_slides)

    def _sample(self, slide_id: str) -> SampleRow:
        if slide_id not in self.samples:
            raise UnknownError(f"no slide {slide_id!r} in {self.config.samples}")
        return self.samples[slide_id]

    def cohort(self) -> list[dict]:
        """One row per slide of the sheet: the cohort's ``summary.tsv`` where the run wrote one
        after the sheet last changed, else each slide's status read now."""
        summary = CohortPaths(self.config.results).summary
        sheet = Path(self.config.samples)
        if summary.is_file() and summary.stat().st_mtime >= sheet.stat().st_mtime:
            table = pd.read_csv(summary, sep="\t", dtype={"slide_id": str})
            rows = table.astype(object).where(table.notna(), None).to_dict("records")
        else:
            rows = [slide_status(self.config, slide_id) for slide_id in self.samples]
        for row in rows:
            known = row["slide_id"] in self.samples
            row["has_thumbnail"] = known and self.thumbnail(row["slide_id"]).is_file()
            row["remote"] = known and self.samples[row["slide_id"]].is_remote
        return rows

    def thumbnail(self, slide_id: str) -> Path:
        self._sample(slide_id)
        return SlidePaths(self.config.results, slide_id).thumbnail

    def view(self, slide_id: str) -> SlideView:
        return self._views.get(slide_id, lambda: self._open_view(slide_id))

    def _open_view(self, slide_id: str) -> SlideView:
        import anndata as ad

        self._sample(slide_id)
        paths = SlidePaths(self.config.results, slide_id)
        if not paths.expression.is_file():
            raise UnknownError(f"{slide_id} has no expression map yet ({paths.expression})")
        expression = ad.read_h5ad(paths.expression, backed="r")
        provenance = expression.uns.get("hespotex", {})
        record = TissueRecord.read(paths.tissue_record)
        obs = expression.obs.copy()
        return SlideView(
            slide_id=slide_id,
            record=record,
            obs=obs,
            centres_px=np.asarray(expression.obsm["spatial"], dtype=np.float64),
            genes=expression.var.copy(),
            expression=expression,
            spacing_px=float(provenance.get("spot_spacing_um", 100.0)) / record.mpp,
            layout=str(provenance.get("grid_layout", "hex")),
        )

    def slide_info(self, slide_id: str) -> dict:
        view = self.view(slide_id)
        scores = [column for column in SCORE_ORDER if column in view.genes.columns]
        genes = [
            {
                "name": gene,
                **{score: _json_number(view.genes.at[gene, score]) for score in scores},
                **(
                    {"served_model": str(view.genes.at[gene, "served_model"])}
                    if "served_model" in view.genes.columns
                    else {}
                ),
            }
            for gene in view.genes.index
        ]
        default = [gene for gene in self.config.outputs.genes if gene in view.genes.index]
        record = view.record
        return {
            "slide_id": slide_id,
            "width_px": record.width_px,
            "height_px": record.height_px,
            "mpp": record.mpp,
            "spots": len(view.obs),
            "spot_radius_px": view.spacing_px / 2,
            "layout": view.layout,
            "genes": genes,
            "score": scores[0] if scores else None,
            "default_gene": default[0] if default else str(view.genes.index[0]),
            # A remote slide has no tiles here: its page draws the spots over the thumbnail.
            "zoomable": not self.samples[slide_id].is_remote,
            "thumbnail_downsample": record.mask_downsample,
        }

    def spots(self, slide_id: str, gene: str) -> dict:
        """The spots' centres, ids, QC and ``gene``'s values, with the colour scale's range."""
        view = self.view(slide_id)
        values = view.gene_values(gene)
        low, high = np.percentile(values, COLOUR_RANGE_PERCENTILES) if len(values) else (0, 0)
        low, high = round(float(low), 4), round(float(high), 4)
        obs = view.obs
        qc = {
            column: (
                obs[column].astype(str).tolist()
                if column in ("qc", "qc_reasons")
                else [_json_number(value) for value in obs[column].astype(float)]
            )
            for column in QC_COLUMNS
            if column in obs.columns
        }
        return {
            "gene": gene,
            "spot_id": obs.index.astype(str).tolist(),
            "x": view.centres_px[:, 0].round(1).tolist(),
            "y": view.centres_px[:, 1].round(1).tolist(),
            "values": np.round(values.astype(float), 4).tolist(),
            # A gene constant on the slide still gets a scale (its spots the scale's bottom).
            "range": [low, high if high > low else low + 1e-4],
            "qc": qc,
        }

    def dropped(self, slide_id: str) -> dict:
        """The spots quality control dropped, with their reasons (none for older runs)."""
        self._sample(slide_id)
        path = SlidePaths(self.config.results, slide_id).dropped_spots
        if not path.is_file():
            return {"x": [], "y": [], "reasons": []}
        table = read_spots(path)
        return {
            "x": table["x_px"].astype(float).round(1).tolist(),
            "y": table["y_px"].astype(float).round(1).tolist(),
            "reasons": table["qc_reasons"].astype(str).tolist(),
        }

    def outline(self, slide_id: str) -> list[list[list[float]]]:
        """The tissue mask's outline as polygons of level-0 (x, y) points."""
        from skimage.measure import approximate_polygon, find_contours

        self._sample(slide_id)
        paths = SlidePaths(self.config.results, slide_id)
        record = TissueRecord.read(paths.tissue_record)
        mask = np.pad(read_mask(paths.tissue_mask), 1)
        polygons = []
        for contour in find_contours(mask.astype(np.float32), 0.5):
            simple = approximate_polygon(contour, OUTLINE_TOLERANCE_PX)
            if len(simple) >= OUTLINE_MIN_POINTS:
                level0 = (simple[:, ::-1] - 1 + 0.5) * record.mask_downsample
                polygons.append(level0.round(1).tolist())
        return polygons

    def tiles(self, slide_id: str) -> TileSource:
        sample = self._sample(slide_id)
        if sample.is_remote:
            raise UnknownError(f"{sample.path} is remote: its page shows the thumbnail, no tiles")
        return self._tiles.get(slide_id, lambda: self._open_tiles(sample))

    @staticmethod
    def _open_tiles(sample: SampleRow) -> TileSource:
        try:
            slide = open_slide(sample.slide_path, sample.slide_id, sample.mpp)
        except SlideError as error:
            raise UnknownError(str(error)) from None
        return TileSource(slide)
