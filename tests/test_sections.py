"""Section loaders on the real files in ../shared/data and small files in the other layouts."""

import json

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA
from PIL import Image

from hespotex.errors import InputDataError
from hespotex.io.sections import (
    SectionLayout,
    SectionSource,
    load_section,
    read_sections_sheet,
)

HER2ST_B4 = SHARED_DATA / "her2st" / "B4"
XFUSE = SHARED_DATA / "xfuse-mob-st"
SQUIDPY = SHARED_DATA / "squidpy-visium-crop"


def xfuse_plain() -> SectionSource:
    return SectionSource(
        "mob", XFUSE / "image.jpg", XFUSE / "counts.tsv", XFUSE / "spots.tsv", mpp=6.9
    )


def test_plain_layout_reads_real_her2st_section():
    source = SectionSource(
        "B4",
        HER2ST_B4 / "B4_BT10737_D2_HE.jpg",
        HER2ST_B4 / "counts.tsv.gz",
        HER2ST_B4 / "spots.tsv",
        mpp=0.69,
    )
    section = load_section(source)
    raw = pd.read_csv(HER2ST_B4 / "counts.tsv.gz", sep="\t", index_col=0)
    assert section.counts.shape == raw.shape and len(section.genes) > 15000
    assert list(section.spot_ids[:2]) == list(raw.index[:2])
    spots = pd.read_csv(HER2ST_B4 / "spots.tsv", sep="\t")
    first = spots[(spots.x.astype(str) + "x" + spots.y.astype(str)) == raw.index[0]]
    assert np.allclose(section.centres_px[0], first[["pixel_x", "pixel_y"]].to_numpy()[0])
    assert section.gene_counts(["ERBB2"]).ravel().tolist() == raw["ERBB2"].tolist()


def test_plain_layout_reads_real_xfuse_section_and_normalises_per_spot():
    section = load_section(xfuse_plain())
    assert section.counts.shape == (282, 10)
    expression = section.log_expression(list(section.genes))
    totals = np.asarray(section.counts.sum(axis=1)).ravel()
    spot = int(np.argmax(totals))
    expected = np.log1p(section.counts[spot].toarray().ravel() / totals[spot] * 1e6)
    assert np.allclose(expression[spot], expected)
    assert np.all(expression[totals == 0] == 0)


def test_spots_outside_the_image_are_refused_naming_the_spots_file(tmp_path):
    spots = pd.read_csv(XFUSE / "spots.tsv", sep="\t")
    spots.loc[3, "pixel_x"] = 5000
    spots.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    source = SectionSource("mob", XFUSE / "image.jpg", XFUSE / "counts.tsv", tmp_path / "spots.tsv")
    with pytest.raises(InputDataError, match="1 spot\\(s\\) lie outside the 929 × 990") as error:
        load_section(source)
    assert error.value.path == tmp_path / "spots.tsv"


def test_counts_without_coordinates_and_without_genes_are_refused(tmp_path):
    spots = pd.read_csv(XFUSE / "spots.tsv", sep="\t").iloc[5:]
    spots.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    source = SectionSource("mob", XFUSE / "image.jpg", XFUSE / "counts.tsv", tmp_path / "spots.tsv")
    with pytest.raises(InputDataError, match="5 spot\\(s\\) of counts.tsv have no coordinates"):
        load_section(source)
    counts = pd.read_csv(XFUSE / "counts.tsv", sep="\t", index_col=0).iloc[:, :0]
    counts.to_csv(tmp_path / "counts.tsv", sep="\t")
    empty = SectionSource("mob", XFUSE / "image.jpg", tmp_path / "counts.tsv", XFUSE / "spots.tsv")
    with pytest.raises(InputDataError, match="no genes") as error:
        load_section(empty)
    assert error.value.path == tmp_path / "counts.tsv"


def test_anndata_of_normalised_values_is_refused_as_not_counts():
    source = SectionSource(
        "crop",
        SQUIDPY / "test_img.jpg",
        counts=SQUIDPY / "test_data.h5ad",
        layout=SectionLayout.ANNDATA,
    )
    with pytest.raises(InputDataError, match="not raw counts") as error:
        load_section(source)
    assert error.value.path == SQUIDPY / "test_data.h5ad"


def write_hest_sample(root, sample: str, mpp: float | None) -> ad.AnnData:
    """A HEST-1k sample from the real squidpy Visium crop: counts recovered from its
    log-normalised values, its image as the pyramidal WSI, metadata with the pixel size."""
    from hespotex.io.pyramids import write_pyramid_tiff

    crop = ad.read_h5ad(SQUIDPY / "test_data.h5ad")
    counts = np.round(np.expm1(crop.X.toarray()) * 10).astype(np.float32)
    adata = ad.AnnData(counts, obs=pd.DataFrame(index=crop.obs_names), var=crop.var[[]])
    adata.obsm["spatial"] = np.asarray(crop.obsm["spatial"], dtype=np.float64)
    for folder in ("st", "wsis", "metadata"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(root / "st" / f"{sample}.h5ad")
    with Image.open(SQUIDPY / "test_img.jpg") as image:
        write_pyramid_tiff(root / "wsis" / f"{sample}.tif", np.asarray(image.convert("RGB")), mpp)
    metadata = {"pixel_size_um_estimated": mpp} if mpp else {"species": "Mus musculus"}
    (root / "metadata" / f"{sample}.json").write_text(json.dumps(metadata))
    return adata


def test_hest_layout_reads_counts_coordinates_and_pixel_size(tmp_path):
    adata = write_hest_sample(tmp_path, "MOUSE1", 2.5)
    section = load_section(SectionSource("MOUSE1", None, layout=SectionLayout.HEST, path=tmp_path))
    assert section.mpp == 2.5
    assert section.image == tmp_path / "wsis" / "MOUSE1.tif"
    assert section.counts.shape == adata.shape
    assert np.array_equal(section.counts.toarray(), adata.X)
    assert np.array_equal(section.centres_px, adata.obsm["spatial"])


def test_hest_layout_without_pixel_size_names_the_metadata_file(tmp_path):
    write_hest_sample(tmp_path, "MOUSE2", None)
    source = SectionSource("MOUSE2", None, layout=SectionLayout.HEST, path=tmp_path)
    with pytest.raises(InputDataError, match="no pixel size") as error:
        load_section(source)
    assert error.value.path == tmp_path / "metadata" / "MOUSE2.json"


def write_space_ranger_outs(outs, positions_header: bool, drop_barcode: bool = False):
    """Space Ranger outs/ holding the real xfuse ST counts as a 10x feature-barcode matrix,
    with one antibody feature that must be ignored."""
    counts = pd.read_csv(XFUSE / "counts.tsv", sep="\t", index_col=0)
    spots = pd.read_csv(XFUSE / "spots.tsv", sep="\t")
    barcodes = [f"AAAC{index:06d}-1" for index in range(len(counts))]
    genes = [*counts.columns, "CD3_TotalSeqB"]
    matrix = np.concatenate([counts.to_numpy().T, np.ones((1, len(counts)))]).astype(np.int32)
    csc = __import__("scipy.sparse", fromlist=["csc_matrix"]).csc_matrix(matrix)
    (outs / "spatial").mkdir(parents=True)
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as handle:
        group = handle.create_group("matrix")
        group["data"], group["indices"], group["indptr"] = csc.data, csc.indices, csc.indptr
        group["shape"] = np.array(matrix.shape, dtype=np.int32)
        group["barcodes"] = np.array(barcodes, dtype="S")
        features = group.create_group("features")
        features["name"] = np.array(genes, dtype="S")
        features["id"] = np.array([f"ENSMUSG{index:011d}" for index in range(len(genes))], "S")
        features["feature_type"] = np.array(
            ["Gene Expression"] * len(counts.columns) + ["Antibody Capture"], dtype="S"
        )
    lookup = {f"{x}x{y}": (row, x, y, px, py) for row, (x, y, px, py) in enumerate(
        spots[["x", "y", "pixel_x", "pixel_y"]].itertuples(index=False, name=None))}  # fmt: skip
    rows = []
    for barcode, spot in zip(barcodes, counts.index, strict=True):
        _, x, y, pixel_x, pixel_y = lookup[spot]
        rows.append((barcode, 1, y, x, pixel_y, pixel_x))
    positions = pd.DataFrame(
        rows[1:] if drop_barcode else rows,
        columns=["barcode", "in_tissue", "array_row", "array_col",
                 "pxl_row_in_fullres", "pxl_col_in_fullres"],
    )  # fmt: skip
    name = "tissue_positions.csv" if positions_header else "tissue_positions_list.csv"
    positions.to_csv(outs / "spatial" / name, index=False, header=positions_header)
    (outs / "spatial" / "scalefactors_json.json").write_text(
        json.dumps({"spot_diameter_fullres": 11.0, "tissue_hires_scalef": 0.5})
    )
    return counts, spots


@pytest.mark.parametrize("positions_header", [True, False])
def test_visium_layout_reads_space_ranger_outs(tmp_path, positions_header):
    counts, _ = write_space_ranger_outs(tmp_path / "outs", positions_header)
    source = SectionSource(
        "mob", XFUSE / "image.jpg", layout=SectionLayout.VISIUM, path=tmp_path / "outs"
    )
    section = load_section(source)
    reference = load_section(xfuse_plain())
    assert list(section.genes) == list(counts.columns)
    assert np.array_equal(section.counts.toarray(), reference.counts.toarray())
    assert np.allclose(section.centres_px, reference.centres_px)
    assert section.mpp == pytest.approx(55.0 / 11.0)


def test_visium_barcode_without_position_names_the_positions_file(tmp_path):
    write_space_ranger_outs(tmp_path / "outs", True, drop_barcode=True)
    source = SectionSource(
        "mob", XFUSE / "image.jpg", layout=SectionLayout.VISIUM, path=tmp_path / "outs"
    )
    with pytest.raises(InputDataError, match="1 spot\\(s\\) of filtered_feature_bc_matrix.h5"):
        load_section(source)


def test_sheet_reads_layouts_and_names_missing_columns(tmp_path):
    sheet = tmp_path / "sections.tsv"
    sheet.write_text(
        "section_id\tlayout\timage\tcounts\tspots\tpath\tmpp\n"
        "a\t\timg.jpg\tc.tsv\ts.tsv\t\t0.5\n"
        "b\thest\t\t\t\thest_root\t\n"
        "c\tvisium\tfull.tif\t\t\tc/outs\t\n"
    )
    sources = read_sections_sheet(sheet)
    assert [source.layout for source in sources] == ["plain", "hest", "visium"]
    assert sources[1].path == tmp_path / "hest_root" and sources[1].mpp is None
    assert sources[0].counts == tmp_path / "c.tsv" and sources[0].mpp == 0.5
    sheet.write_text("section_id\tlayout\tpath\nc\tvisium\touts\n")
    with pytest.raises(InputDataError, match="line 2: a visium section needs column\\(s\\) image"):
        read_sections_sheet(sheet)
