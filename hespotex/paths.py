"""Where every file lives: one layer shared by the Snakemake rules and the CLI.

Pure path arithmetic, no I/O. With ``slide_id="{slide}"`` the same object yields Snakemake
patterns, so rules and code can never disagree on a file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The cohort tables' folder beside the slides' folders; no slide may take its name.
COHORT_FOLDER = "cohort"


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
    def artifacts_mask(self) -> Path:
        """Ink labels and folds at the tissue mask's resolution (``stages.artifacts``)."""
        return self.root / "artifacts_mask.png"

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
    def quality_picture(self) -> Path:
        """The QC picture: tissue outline, artefacts, dropped and flagged spots, a legend."""
        return self.root / "qc" / "quality.png"

    @property
    def spots(self) -> Path:
        return self.root / "spots.tsv"

    @property
    def dropped_spots(self) -> Path:
        return self.root / "spots_dropped.tsv"

    @property
    def spot_qc(self) -> Path:
        """The tiles stage's QC counts, shares and slide verdict."""
        return self.root / "qc" / "spot_qc.json"

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

    def stage_record(self, stage: str) -> Path:
        """The stage's completion record (``io.stage_records``): written once it succeeded."""
        return self.root / "qc" / "stages" / f"{stage}.json"

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

    def gallery(self, kind: str) -> Path:
        """The finished slides' images of one kind (tissue_qc, heatmaps, top_patches), linked
        for `snakemake --report`."""
        return self.root / "gallery" / kind


@dataclass(frozen=True)
class RunPaths:
    """The run's own files under ``results/.hespotex/``: the validated config the rules pass
    to every command, and per shard of slides (one job's worth) its sample rows, the manifest
    saying how each slide ended, and the log of failures that makes the next run retry them.
    ``shard`` is a zero-padded index (or ``{shard}`` for Snakemake patterns)."""

    results: Path

    @property
    def root(self) -> Path:
        return Path(self.results) / ".hespotex"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    def shard_sheet(self, job: str, shard: str) -> Path:
        return self.root / "shards" / job / f"{shard}.tsv"

    def shard_manifest(self, job: str, shard: str) -> Path:
        return self.root / "shards" / job / f"{shard}.manifest.tsv"

    def shard_failures(self, job: str, shard: str) -> Path:
        return self.root / "shards" / job / f"{shard}.failures.jsonl"


@dataclass(frozen=True)
class LogPaths:
    """Where each stage's log of a slide goes, and the cohort rule's."""

    logs: Path

    def stage(self, stage: str, slide_id: str) -> Path:
        return Path(self.logs) / stage / f"{slide_id}.log"

    def shard(self, job: str, shard: str) -> Path:
        return Path(self.logs) / "shards" / job / f"{shard}.log"

    @property
    def cohort(self) -> Path:
        return Path(self.logs) / "cohort.log"
