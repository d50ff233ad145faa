"""Paired training sections: an H&E image, spot counts and spot centres in image pixels.

A sections sheet (TSV) lists them, one row per section: ``section_id``, ``layout`` (default
``plain``), ``mpp`` (µm per image pixel; optional where the layout records it) and the
columns its layout needs:

- ``plain`` (HER2ST, cSCC): ``image``, ``counts`` (TSV spots × genes of raw counts, spot ids
  in the first column, may be gzipped) and ``spots`` (TSV with ``pixel_x``/``pixel_y`` in
  image pixels and either ``spot_id`` or array ``x``/``y``, ids ``"{x}x{y}"``);
- ``hest`` (a HEST-1k sample): ``path``, the HEST folder holding ``st/{id}.h5ad``
  (``obsm['spatial']`` in level-0 pixels), ``wsis/{id}.tif`` and ``metadata/{id}.json``
  (``pixel_size_um_estimated``), where ``id`` is the section_id;
- ``visium`` (10x Space Ranger): ``path``, the ``outs/`` folder
  (``filtered_feature_bc_matrix.h5``, ``spatial/tissue_positions*.csv``,
  ``spatial/scalefactors_json.json``), and ``image``, the full-resolution image the
  positions refer to; without an ``mpp`` it is 55 µm over the spot diameter in pixels;
- ``anndata``: ``counts``, an ``.h5ad`` of raw counts with ``obsm['spatial']`` in pixels of
  ``image``.

Every loader checks what it read: raw counts (not normalised values), at least one gene,
matching spot ids, coordinates inside the image; errors name the file at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from hespotex.config import LibrarySize
from hespotex.errors import InputDataError
from hespotex.units import is_plausible_mpp

VISIUM_SPOT_DIAMETER_UM = 55.0
HEST_MPP_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")


class SectionLayout(StrEnum):
    PLAIN = "plain"
    HEST = "hest"
    VISIUM = "visium"
    ANNDATA = "anndata"


LAYOUT_COLUMNS = {
    SectionLayout.PLAIN: ("image", "counts", "spots"),
    SectionLayout.HEST: ("path",),
    SectionLayout.VISIUM: ("path", "image"),
    SectionLayout.ANNDATA: ("counts", "image"),
}


@dataclass(frozen=True)
class SectionSource:
    section_id: str
    image: Path | None
    counts: Path | None = None
    spots: Path | None = None
    mpp: float | None = None
    layout: SectionLayout = SectionLayout.PLAIN
    path: Path | None = None


@dataclass
class Section:
    """Raw counts (spots × genes, sparse) with each spot's centre in image pixels."""

    section_id: str
    image: Path
    mpp: float | None
    counts: sparse.csr_matrix
    genes: pd.Index
    spot_ids: pd.Index
    centres_px: np.ndarray

    def gene_counts(self, genes: list[str]) -> np.ndarray:
        """Dense float64 counts of ``genes``, in that order."""
        columns = self.genes.get_indexer(genes)
        if (columns < 0).any():
            absent = [gene for gene, column in zip(genes, columns, strict=True) if column < 0]
            raise InputDataError(self.image, f"section {self.section_id} lacks genes {absent[:5]}")
        return self.counts[:, columns].toarray().astype(np.float64)

    def log_expression(
        self,
        genes: list[str],
        target_sum: float = 1e6,
        library_size: LibrarySize = LibrarySize.ALL_GENES,
    ) -> np.ndarray:
        """CPM, then log1p, of ``genes`` (spots × genes); the library is all of the spot's
        counts, or the counts of ``genes`` alone (the authors' choice)."""
        counts = self.gene_counts(genes)
        if library_size == LibrarySize.SELECTED_GENES:
            totals = counts.sum(axis=1, keepdims=True)
        else:
            totals = np.asarray(self.counts.sum(axis=1), dtype=np.float64)
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        return np.log1p(counts * scale)

    def subset_spots(self, keep: np.ndarray) -> Section:
        return Section(
            self.section_id,
            self.image,
            self.mpp,
            self.counts[keep],
            self.genes,
            self.spot_ids[keep],
            self.centres_px[keep],
        )


def read_sections_sheet(path: Path) -> list[SectionSource]:
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputDataError(path, f"not a readable sections sheet: {error}") from None
    if "section_id" not in table.columns:
        raise InputDataError(path, "the sections sheet lacks column section_id")
    base = path.parent
    sources = []
    for line, row in enumerate(table.to_dict("records"), start=2):
        row = {key: value.strip() for key, value in row.items()}
        try:
            layout = SectionLayout(row.get("layout") or SectionLayout.PLAIN)
        except ValueError:
            choices = ", ".join(layout.value for layout in SectionLayout)
            raise InputDataError(path, f"line {line}: layout must be one of {choices}") from None
        missing = [column for column in LAYOUT_COLUMNS[layout] if not row.get(column)]
        if missing:
            raise InputDataError(
                path, f"line {line}: a {layout.value} section needs column(s) {', '.join(missing)}"
            )
        mpp = float(row["mpp"]) if row.get("mpp") else None
        if mpp is not None and not is_plausible_mpp(mpp):
            raise InputDataError(path, f"section {row['section_id']}: mpp {mpp} outside (0, 100]")
        sources.append(
            SectionSource(
                section_id=row["section_id"],
                layout=layout,
                mpp=mpp,
                **{
                    column: base / row[column] if row.get(column) else None
                    for column in ("image", "counts", "spots", "path")
                },
            )
        )
    if len({source.section_id for source in sources}) != len(sources):
        raise InputDataError(path, "duplicate section_id")
    if not sources:
        raise InputDataError(path, "the sections sheet lists no sections")
    return sources


def image_size(image: Path) -> tuple[int, int]:
    from hespotex.io.backends import open_backend

    backend = open_backend(image)
    try:
        return tuple(backend.level_dimensions[0])
    finally:
        backend.close()


def _checked_section(
    source: SectionSource,
    image: Path,
    mpp: float | None,
    counts: sparse.spmatrix | np.ndarray,
    genes: pd.Index,
    spot_ids: pd.Index,
    centres_px: np.ndarray,
    counts_file: Path,
    spots_file: Path,
) -> Section:
    if len(genes) == 0:
        raise InputDataError(counts_file, "no genes")
    if len(spot_ids) == 0:
        raise InputDataError(counts_file, "no spots")
    if spot_ids.has_duplicates:
        raise InputDataError(
            counts_file, f"duplicate spot ids, e.g. {spot_ids[spot_ids.duplicated()][:3].tolist()}"
        )
    matrix = sparse.csr_matrix(counts, dtype=np.float32)
    values = matrix.data
    if values.size and ((values < 0).any() or not np.allclose(values, np.round(values))):
        raise InputDataError(
            counts_file,
            "the values are not raw counts (negative or fractional: normalised data?); "
            "HESpotEx selects genes and normalises from raw counts",
        )
    centres = np.asarray(centres_px, dtype=np.float64)
    if not np.isfinite(centres).all():
        raise InputDataError(spots_file, "some spot coordinates are missing or not numbers")
    width, height = image_size(image)
    outside = (
        (centres[:, 0] < 0)
        | (centres[:, 0] >= width)
        | (centres[:, 1] < 0)
        | (centres[:, 1] >= height)
    )
    if outside.any():
        raise InputDataError(
            spots_file,
            f"{int(outside.sum())} spot(s) lie outside the {width} × {height} px image {image} "
            "(coordinates must be in that image's pixels)",
        )
    return Section(source.section_id, image, mpp, matrix, genes, spot_ids, centres)


def _unmatched(counts_ids: pd.Index, spot_ids: pd.Index, counts_file: Path, spots_file: Path):
    unmatched = counts_ids.difference(spot_ids)
    if len(unmatched):
        raise InputDataError(
            spots_file,
            f"{len(unmatched)} spot(s) of {counts_file.name} have no coordinates, "
            f"e.g. {list(unmatched[:3])}",
        )


def _plain_spot_ids(spots: pd.DataFrame, path: Path) -> pd.Index:
    if "spot_id" in spots.columns:
        return pd.Index(spots["spot_id"].astype(str))
    if {"x", "y"} <= set(spots.columns):
        return pd.Index([f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)])
    raise InputDataError(path, "the spots table needs a spot_id column or array x and y columns")


def _read_table(path: Path, what: str, **options) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **options)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputDataError(path, f"not a readable {what}: {error}") from None


def load_plain(source: SectionSource) -> Section:
    counts = _read_table(source.counts, "counts table", sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    if not all(np.issubdtype(dtype, np.number) for dtype in counts.dtypes):
        raise InputDataError(source.counts, "the counts table has non-numeric columns")
    spots = _read_table(source.spots, "spots table", sep="\t")
    if not {"pixel_x", "pixel_y"} <= set(spots.columns):
        raise InputDataError(source.spots, "the spots table needs pixel_x and pixel_y columns")
    spots.index = _plain_spot_ids(spots, source.spots)
    spots = spots[~spots.index.duplicated()]
    _unmatched(counts.index, spots.index, source.counts, source.spots)
    return _checked_section(
        source,
        source.image,
        source.mpp,
        counts.to_numpy(dtype=np.float32),
        pd.Index(counts.columns.astype(str)),
        counts.index,
        spots.loc[counts.index, ["pixel_x", "pixel_y"]].to_numpy(),
        source.counts,
        source.spots,
    )


def _read_h5ad(path: Path):
    import anndata as ad

    if not path.is_file():
        raise InputDataError(path, "the AnnData file does not exist")
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as error:
        raise InputDataError(path, f"not a readable .h5ad file: {error}") from None


def _from_anndata(source: SectionSource, h5ad: Path, image: Path, mpp: float | None) -> Section:
    adata = _read_h5ad(h5ad)
    if "spatial" not in adata.obsm:
        raise InputDataError(h5ad, "no obsm['spatial'] with the spot centres in image pixels")
    spatial = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if spatial.ndim != 2 or spatial.shape[1] != 2:
        raise InputDataError(
            h5ad, f"obsm['spatial'] has shape {spatial.shape}, expected (spots, 2)"
        )
    return _checked_section(
        source,
        image,
        mpp,
        adata.X,
        pd.Index(adata.var_names.astype(str)),
        pd.Index(adata.obs_names.astype(str)),
        spatial,
        h5ad,
        h5ad,
    )


def hest_mpp(metadata: Path) -> float:
    try:
        record = json.loads(metadata.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputDataError(metadata, f"not readable HEST metadata: {error}") from None
    for key in HEST_MPP_KEYS:
        if isinstance(record.get(key), int | float) and is_plausible_mpp(record[key]):
            return float(record[key])
    raise InputDataError(
        metadata, f"no pixel size ({' or '.join(HEST_MPP_KEYS)}); give the section an mpp"
    )


def load_hest(source: SectionSource) -> Section:
    sample = source.section_id
    h5ad = source.path / "st" / f"{sample}.h5ad"
    image = source.image or source.path / "wsis" / f"{sample}.tif"
    mpp = source.mpp or hest_mpp(source.path / "metadata" / f"{sample}.json")
    return _from_anndata(source, h5ad, image, mpp)


def load_anndata(source: SectionSource) -> Section:
    return _from_anndata(source, source.counts, source.image, source.mpp)


def read_10x_h5(path: Path) -> tuple[sparse.csr_matrix, pd.Index, pd.Index]:
    """Space Ranger's feature-barcode matrix: (barcodes × Gene Expression features) counts,
    gene names (made unique as scanpy does) and barcodes."""
    import anndata as ad
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            group = handle["matrix"]
            n_features, n_barcodes = group["shape"][()]
            matrix = sparse.csc_matrix(
                (group["data"][()], group["indices"][()], group["indptr"][()]),
                shape=(n_features, n_barcodes),
            )
            names = group["features"]["name"][()].astype(str)
            kinds = group["features"]["feature_type"][()].astype(str)
            barcodes = group["barcodes"][()].astype(str)
    except (OSError, KeyError, ValueError) as error:
        raise InputDataError(path, f"not a Space Ranger feature-barcode matrix: {error}") from None
    genes = kinds == "Gene Expression"
    names = ad.utils.make_index_unique(pd.Index(names[genes]))
    return matrix[genes].T.tocsr(), names, pd.Index(barcodes)


def read_tissue_positions(spatial: Path) -> tuple[pd.DataFrame, Path]:
    """Barcode → (pixel x, pixel y, in_tissue) from Space Ranger ≥ 2 (with a header) or 1.x
    (``tissue_positions_list.csv``, without)."""
    columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row", "pxl_col"]
    for name, header in (("tissue_positions.csv", 0), ("tissue_positions_list.csv", None)):
        path = spatial / name
        if path.is_file():
            table = _read_table(path, "tissue positions file", header=header)
            if table.shape[1] != len(columns):
                raise InputDataError(
                    path, f"expected {len(columns)} columns, found {table.shape[1]}"
                )
            table.columns = columns
            return table.set_index(table["barcode"].astype(str)), path
    raise InputDataError(spatial, "no tissue_positions.csv or tissue_positions_list.csv")


def load_visium(source: SectionSource) -> Section:
    matrix_file = source.path / "filtered_feature_bc_matrix.h5"
    if not matrix_file.is_file():
        raise InputDataError(matrix_file, "the Space Ranger matrix does not exist")
    counts, genes, barcodes = read_10x_h5(matrix_file)
    positions, positions_file = read_tissue_positions(source.path / "spatial")
    _unmatched(barcodes, positions.index, matrix_file, positions_file)
    mpp = source.mpp
    if mpp is None:
        scalefactors = source.path / "spatial" / "scalefactors_json.json"
        try:
            diameter = float(json.loads(scalefactors.read_text())["spot_diameter_fullres"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise InputDataError(
                scalefactors, f"no spot_diameter_fullres to derive the mpp from ({error})"
            ) from None
        mpp = VISIUM_SPOT_DIAMETER_UM / diameter
    centres = positions.loc[barcodes, ["pxl_col", "pxl_row"]].to_numpy()
    return _checked_section(
        source, source.image, mpp, counts, genes, barcodes, centres, matrix_file, positions_file
    )


LOADERS = {
    SectionLayout.PLAIN: load_plain,
    SectionLayout.HEST: load_hest,
    SectionLayout.VISIUM: load_visium,
    SectionLayout.ANNDATA: load_anndata,
}


def load_section(source: SectionSource) -> Section:
    """Read one section in its layout, checked (see the module docstring)."""
    return LOADERS[source.layout](source)
