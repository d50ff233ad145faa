"""Where every per-slide file lives: one layer shared by the Snakemake rules and the CLI.

Pure path arithmetic, no I/O. With ``slide_id="{slide}"`` the same object yields Snakemake
patterns, so rules and code can never disagree on a file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The cohort tables' folder beside the slides' folders; no slide may take its name.
COHORT_FOLDER = "cohort"
# The stages a slide goes through, in order; each is a `hespotex` sub-command with its own log.
STAGES = ("tissue", "tiles", "features", "graph", "decode", "outputs")


@dataclass(frozen=True)
class SlidePaths:
    results: Path
    slide_id: str

    @property
    def root(self) -> Path:
        return Path(self.results) / self.slide_id

    @property
    def tissue_mask(self) -> Path:
        return self.root / "tissue_mask.png"

    @property
    def thumbnail(self) -> Path:
        return self.root / "thumbnail.png"

    @property
    def tissue_record(self) -> Path:
        return self.root / "tissue.json"

    @property
    def tissue_qc(self) -> Path:
        return self.root / "qc" / "tissue_overlay.png"

    @property
    def spots(self) -> Path:
        return self.root / "spots.tsv"

    @property
    def features(self) -> Path:
        return self.root / "features.zarr"

    @property
    def graph(self) -> Path:
        return self.root / "graph.zarr"

    @property
    def expression(self) -> Path:
        return self.root / "expression.h5ad"

    @property
    def qupath(self) -> Path:
        return self.root / "qupath.geojson"

    @property
    def heatmaps(self) -> Path:
        return self.root / "heatmaps"

    def heatmap(self, gene: str) -> Path:
        return self.heatmaps / f"{gene}.png"

    @property
    def top_patches(self) -> Path:
        return self.root / "top_patches"

    def top_patch_montage(self, gene: str) -> Path:
        return self.top_patches / f"{gene}.png"

    def stage_timing(self, stage: str) -> Path:
        return self.root / "qc" / "timings" / f"{stage}.json"

    @property
    def qc(self) -> Path:
        return self.root / "qc.json"

    @property
    def spatialdata(self) -> Path:
        return self.root / "spatialdata.zarr"


@dataclass(frozen=True)
class CohortPaths:
    results: Path

    @property
    def root(self) -> Path:
        return Path(self.results) / COHORT_FOLDER

    @property
    def summary(self) -> Path:
        return self.root / "summary.tsv"

    @property
    def pseudobulk(self) -> Path:
        return self.root / "pseudobulk.tsv"


@dataclass(frozen=True)
class LogPaths:
    """Where each stage's log of a slide goes, and the cohort rule's."""

    logs: Path

    def stage(self, stage: str, slide_id: str) -> Path:
        return Path(self.logs) / stage / f"{slide_id}.log"

    @property
    def cohort(self) -> Path:
        return Path(self.logs) / "cohort.log"
