"""TCGA where it lives: barcodes, sample sheets from IDC's installed index and from GDC
manifests (errors naming the line), and `evaluate-bulk` joining slides to samples by barcode."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SVS

from hespotex.cli.main import main
from hespotex.config import read_sample_sheet
from hespotex.errors import ConfigError
from hespotex.evaluation.bulk import run_evaluate_bulk
from hespotex.io.cohort_sheets import gdc_sheet, idc_sheet, write_cohort_sheet
from hespotex.tcga import patient_of, sample_of, slide_barcode

MD5 = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("identifier", "sample"),
    [
        ("TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A1-A0SB-01"),
        ("TCGA-A1-A0SB-11A-01-TS1", "TCGA-A1-A0SB-11"),
        ("TCGA-A1-A0SB-TP-DX1", "TCGA-A1-A0SB-01"),
        ("TCGA-A1-A0SB-NT-TS1", "TCGA-A1-A0SB-11"),
        ("TCGA-A1-A0SB-TP-DX1-2", "TCGA-A1-A0SB-01"),
        ("TCGA-A1-A0SB-01A-11R-A144-07", "TCGA-A1-A0SB-01"),
        ("TCGA-A1-A0SB-01", "TCGA-A1-A0SB-01"),
        ("CMU-1-svs", None),
        ("TCGA-A1-A0SB-XX-DX1", None),
    ],
)
def test_slides_aliquots_and_samples_meet_at_the_sample(identifier, sample):
    assert sample_of(identifier) == sample


def test_a_gdc_file_name_starts_with_its_slide_barcode():
    name = "TCGA-A1-A0SB-01Z-00-DX1.E8C8A5B1-3E7A-4A1E-8C3E-0A1B2C3D4E5F.svs"
    assert slide_barcode(name) == "TCGA-A1-A0SB-01Z-00-DX1"
    assert patient_of("TCGA-A1-A0SB-01Z-00-DX1") == "TCGA-A1-A0SB"
    assert slide_barcode("CMU-1-Small-Region.svs") is None


def write_manifest(path, rows):
    lines = ["id\tfilename\tmd5\tsize\tstate"]
    lines += ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def gdc_download(tmp_path):
    """A manifest of two slides and gdc-client's layout of them (the real SVS, linked)."""
    rows = [
        ("uuid-1", "TCGA-A1-A0SB-01Z-00-DX1.AAAA.svs", MD5, str(SVS.stat().st_size), "released"),
        ("uuid-2", "TCGA-A2-A0CM-01Z-00-DX1.BBBB.svs", MD5, "2000", "released"),
    ]
    root = tmp_path / "gdc"
    for file_id, filename, *_ in rows:
        (root / file_id).mkdir(parents=True)
        (root / file_id / filename).symlink_to(SVS)
    return write_manifest(tmp_path / "manifest.txt", rows), root


def test_a_gdc_manifest_and_its_download_make_a_sheet_the_pipeline_reads(gdc_download, tmp_path):
    manifest, root = gdc_download
    sheet = gdc_sheet(manifest, root)
    assert sheet["slide_id"].tolist() == ["TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A2-A0CM-01Z-00-DX1"]
    assert sheet.loc[0, "path"] == str(root / "uuid-1" / "TCGA-A1-A0SB-01Z-00-DX1.AAAA.svs")
    assert sheet["sample_barcode"].tolist() == ["TCGA-A1-A0SB-01", "TCGA-A2-A0CM-01"]
    assert sheet["patient_id"].tolist() == ["TCGA-A1-A0SB", "TCGA-A2-A0CM"]
    assert sheet["source_id"].tolist() == ["uuid-1", "uuid-2"]
    write_cohort_sheet(sheet, tmp_path / "samples.tsv")
    rows = read_sample_sheet(tmp_path / "samples.tsv")
    assert rows["TCGA-A1-A0SB-01Z-00-DX1"].md5 == MD5
    assert rows["TCGA-A1-A0SB-01Z-00-DX1"].size_bytes == SVS.stat().st_size
    remote = gdc_sheet(manifest, None)
    assert remote.loc[0, "path"] == "https://api.gdc.cancer.gov/data/uuid-1"
    assert read_sample_sheet_of(remote, tmp_path)["TCGA-A2-A0CM-01Z-00-DX1"].is_remote


def read_sample_sheet_of(sheet, folder):
    write_cohort_sheet(sheet, folder / "remote.tsv")
    return read_sample_sheet(folder / "remote.tsv")


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (
            [("u1", "a.svs", MD5, "10", "released")],
            "id\tfile\tmd5\tsize",
            r"no column\(s\) filename",
        ),
        ([("u1", "a.svs", "xyz", "10", "released")], None, "line 2: size must be a byte count"),
        ([("u1", "", MD5, "10", "released")], None, "line 2: an empty id"),
        (
            [
                ("u1", "TCGA-A1-A0SB-01Z-00-DX1.A.svs", MD5, "10", "released"),
                ("u2", "TCGA-A1-A0SB-01Z-00-DX1.B.svs", MD5, "10", "released"),
            ],
            None,
            "line 3: slide TCGA-A1-A0SB-01Z-00-DX1 is listed again \\(first on line 2\\)",
        ),
    ],
)
def test_a_bad_gdc_manifest_fails_naming_the_line(tmp_path, rows, header, message):
    manifest = write_manifest(tmp_path / "manifest.txt", rows)
    if header:
        lines = manifest.read_text().splitlines()
        manifest.write_text("\n".join([header, *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match=message) as raised:
        gdc_sheet(manifest, None)
    assert str(manifest) in str(raised.value)


def test_a_file_gdc_client_did_not_download_is_named(gdc_download):
    manifest, root = gdc_download
    (root / "uuid-2" / "TCGA-A2-A0CM-01Z-00-DX1.BBBB.svs").unlink()
    with pytest.raises(ConfigError, match="line 3: .*uuid-2.* does not exist"):
        gdc_sheet(manifest, root)


def test_idc_s_index_gives_a_collection_s_diagnostic_slides_in_its_bucket():
    pytest.importorskip("idc_index_data")
    sheet = idc_sheet(["tcga_brca"], "diagnostic")
    assert 1000 < len(sheet) < 1300 and sheet["slide_id"].is_unique
    assert sheet["path"].str.fullmatch(r"s3://idc-open-data/[0-9a-f-]{36}/").all()
    assert (sheet["path"].str[19:-1] == sheet["source_id"]).all()
    # IDC's descriptions name the tissue (TP, TM), bar a few ("FFPE HE DX1"): no sample then.
    assert sheet["slide_id"].str.fullmatch(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-(T[PM]-)?DX\d+").all()
    samples = sheet["sample_barcode"].dropna()
    assert len(samples) >= 0.99 * len(sheet)
    assert samples.str.fullmatch(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-0[16]").all()
    assert (sheet["collection"] == "tcga_brca").all()
    frozen = idc_sheet(["tcga_brca"], "frozen")
    assert not set(frozen["slide_id"]) & set(sheet["slide_id"])
    assert frozen["slide_id"].str.contains("-(?:TS|BS)").any()
    patients = sheet["patient_id"].unique()[:3].tolist()
    few = idc_sheet(["tcga_brca"], "diagnostic", patients)
    assert set(few["patient_id"]) == set(patients)


def test_idc_refusals_name_what_is_unknown():
    pytest.importorskip("idc_index_data")
    with pytest.raises(ConfigError, match="unknown IDC collection.*tcga_nope.*tcga_brca"):
        idc_sheet(["tcga_nope"])
    with pytest.raises(ConfigError, match="1 patient.*TCGA-ZZ-ZZZZ"):
        idc_sheet(["tcga_brca"], "diagnostic", ["TCGA-ZZ-ZZZZ"])


def test_the_sheet_command_writes_an_idc_sheet(tmp_path):
    pytest.importorskip("idc_index_data")
    patients = tmp_path / "patients.txt"
    patients.write_text("TCGA-OR-A5J1\nTCGA-OR-A5J2\n")
    out = tmp_path / "acc.tsv"
    argv = ["sheet", "idc", "--collection", "tcga_acc", "--patients", str(patients)]
    assert main([*argv, "--out", str(out)]) == 0
    rows = read_sample_sheet(out)
    assert {row.patient_id for row in rows.values()} == {"TCGA-OR-A5J1", "TCGA-OR-A5J2"}
    assert all(row.is_remote and row.collection == "tcga_acc" for row in rows.values())


def test_evaluate_bulk_joins_tcga_slides_to_samples_by_barcode(tmp_path, caplog):
    genes = [f"G{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    truth = rng.normal(5, 1, size=(6, len(genes)))
    patients = [f"TCGA-A1-A{i:03d}" for i in range(6)]
    slides = [f"{patient}-01Z-00-DX1" for patient in patients[:4]]
    slides += [f"{patient}-TP-DX1" for patient in patients[4:]]  # IDC's names
    pseudobulk = pd.DataFrame(truth + rng.normal(0, 0.1, truth.shape), index=slides, columns=genes)
    pseudobulk.loc["CMU-1-svs"] = 1.0  # not TCGA: left out
    aliquots = [f"{patient}-01A-11R-A144-07" for patient in patients]
    bulk = pd.DataFrame(np.expm1(truth), index=aliquots, columns=genes)
    bulk.loc[f"{patients[0]}-01B-21R-A144-07"] = np.expm1(truth[0])  # a second aliquot
    bulk.loc[f"{patients[1]}-11A-01R-A144-07"] = 0.0  # normal tissue: another sample
    pseudobulk.to_csv(tmp_path / "pseudobulk.tsv", sep="\t")
    bulk.to_csv(tmp_path / "bulk.tsv", sep="\t")
    caplog.set_level("INFO")
    summary = run_evaluate_bulk(
        tmp_path / "pseudobulk.tsv", tmp_path / "bulk.tsv", tmp_path / "out"
    )
    assert summary["matched_by"].startswith("TCGA barcode")
    assert (summary["slides"], summary["slides_matched"], summary["samples"]) == (7, 6, 6)
    assert summary["bulk_samples"] == 7, "two aliquots of one sample count once"
    assert summary["sample_pearson_mean"] > 0.9
    assert "6 of 7 slides matched 6 of 7 bulk samples, by TCGA barcode" in caplog.text
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["slides_matched"] == 6
