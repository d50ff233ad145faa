"""Sample sheets from where TCGA's slides live: IDC's index and GDC manifests.

- **IDC** (NCI Imaging Data Commons): every TCGA slide is a DICOM series in the public bucket
  ``s3://idc-open-data/<crdc_series_uuid>/``. The ``idc-index-data`` package ships IDC's series
  index as parquet, so the sheet is made offline: by collection (``tcga_brca``, ...), FFPE
  diagnostic or frozen, optionally for a list of patients. IDC gives the patient and the
  series description (``FFPE HE TP DX1``), not the full slide barcode, so a slide is named
  ``<patient>-<tissue code>-<slide>`` (``TCGA-A1-A0SB-TP-DX1``), its sample from the tissue
  code (``hespotex.tcga``).
- **GDC**: a manifest (``id filename md5 size state``, tab-separated) as the portal writes
  it, and the folder gdc-client downloaded it into (``<root>/<id>/<filename>``), or the GDC
  data endpoint (``https://api.gdc.cancer.gov/data/<id>``) to fetch each slide as it is run.
  The file name starts with the slide barcode, which becomes the slide id.

Both sheets carry what a TCGA user joins on: patient, sample barcode, collection or project,
the source id (IDC series UUID, GDC file UUID), the expected size and the MD5 where known.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hespotex.config import SAMPLE_COLUMNS, SLIDE_ID_PATTERN, SampleRow, sample_sheet_text
from hespotex.errors import ConfigError
from hespotex.tcga import patient_of, sample_of, slide_barcode

GDC_DATA_ENDPOINT = "https://api.gdc.cancer.gov/data"
GDC_MANIFEST_COLUMNS = ("id", "filename", "md5", "size")
IDC_KINDS = {"diagnostic": ("FFPE",), "frozen": ("Frozen",), "all": ("FFPE", "Frozen")}
MB = 1_000_000


def _sheet(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=list(SAMPLE_COLUMNS))


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._-")[:128] or "slide"


def gdc_sheet(manifest: Path, root: Path | None) -> pd.DataFrame:
    """A sheet of the manifest's slides: local files under ``root`` as gdc-client lays them
    out, or (``root`` None) GDC's data endpoint, fetched as each slide is run."""
    manifest = Path(manifest)
    try:
        table = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ConfigError(f"{manifest}: not a readable GDC manifest: {error}") from None
    missing = [column for column in GDC_MANIFEST_COLUMNS if column not in table.columns]
    if missing:
        raise ConfigError(
            f"{manifest}: not a GDC manifest: no column(s) {', '.join(missing)} (expected the "
            "portal's tab-separated id, filename, md5, size, state)"
        )
    rows, seen = [], {}
    for line, record in enumerate(table.to_dict("records"), start=2):
        where = f"{manifest}, line {line}"
        if not all(record[column].strip() for column in GDC_MANIFEST_COLUMNS):
            raise ConfigError(f"{where}: an empty id, filename, md5 or size")
        if not record["size"].isdigit() or not re.fullmatch(r"[0-9a-f]{32}", record["md5"]):
            raise ConfigError(f"{where}: size must be a byte count and md5 32 hex digits")
        filename = record["filename"]
        slide_id = slide_barcode(filename) or _safe_id(Path(filename).stem)
        if slide_id in seen:
            raise ConfigError(
                f"{where}: slide {slide_id} is listed again (first on line {seen[slide_id]})"
            )
        seen[slide_id] = line
        if root is None:
            path = f"{GDC_DATA_ENDPOINT}/{record['id']}"
        else:
            local = Path(root) / record["id"] / filename
            if not local.is_file():
                raise ConfigError(
                    f"{where}: {local} does not exist (download it with gdc-client, or "
                    "leave out --root to fetch each slide from GDC as it is run)"
                )
            path = str(local)
        rows.append(
            {
                "slide_id": slide_id,
                "path": path,
                "size_bytes": int(record["size"]),
                "md5": record["md5"],
                "patient_id": patient_of(slide_id),
                "sample_barcode": sample_of(slide_id),
                "source_id": record["id"],
            }
        )
    if not rows:
        raise ConfigError(f"{manifest}: the manifest lists no file")
    return _sheet(rows)


@functools.cache
def _slide_series() -> pd.DataFrame:
    """The slide-microscopy series of the index ``idc-index-data`` installs, read once per
    process (a sheet and its sizes both need it)."""
    import idc_index_data

    return pd.read_parquet(
        idc_index_data.IDC_INDEX_PARQUET_FILEPATH,
        columns=[
            "collection_id",
            "PatientID",
            "SeriesDescription",
            "series_size_MB",
            "series_aws_url",
            "crdc_series_uuid",
        ],
        filters=[("Modality", "==", "SM")],
    )


def idc_collections() -> list[str]:
    """The collections of the installed index that hold slides."""
    return sorted(_slide_series()["collection_id"].unique())


def read_idc_index(collections: Sequence[str]) -> pd.DataFrame:
    """IDC's slide-microscopy series of ``collections``, from the installed index."""
    index = _slide_series()
    known = set(index["collection_id"])
    unknown = [collection for collection in collections if collection not in known]
    if unknown:
        tcga = sorted(collection for collection in known if collection.startswith("tcga"))
        raise ConfigError(
            f"unknown IDC collection(s) {', '.join(unknown)}; slide collections include "
            f"{', '.join(tcga)}"
        )
    return index[index["collection_id"].isin(collections)]


def idc_sheet(
    collections: Sequence[str], kind: str = "diagnostic", patients: Sequence[str] | None = None
) -> pd.DataFrame:
    """A sheet of the collections' H&E slides of ``kind`` (diagnostic FFPE, frozen or all),
    for ``patients`` where given, each a DICOM series folder in IDC's public bucket."""
    index = read_idc_index(collections)
    words = index["SeriesDescription"].str.split()
    chosen = index[words.str[0].isin(IDC_KINDS[kind]) & (words.str[1] == "HE")]
    if patients is not None:
        wanted = set(patients)
        absent = sorted(wanted - set(chosen["PatientID"]))
        if absent:
            raise ConfigError(
                f"{len(absent)} patient(s) have no {kind} H&E slide in {', '.join(collections)}: "
                f"{', '.join(absent[:10])}"
            )
        chosen = chosen[chosen["PatientID"].isin(wanted)]
    rows, counts = [], {}
    for series in chosen.sort_values(["PatientID", "SeriesDescription"]).itertuples():
        words = series.SeriesDescription.split()
        base = _safe_id(f"{series.PatientID}-{'-'.join(words[2:])}")
        counts[base] = counts.get(base, 0) + 1
        slide_id = base if counts[base] == 1 else f"{base}-{counts[base]}"
        rows.append(
            {
                "slide_id": slide_id,
                "path": series.series_aws_url.rstrip("*"),
                "patient_id": series.PatientID,
                "sample_barcode": sample_of(base),
                "collection": series.collection_id,
                "source_id": series.crdc_series_uuid,
            }
        )
    if not rows:
        raise ConfigError(f"no {kind} H&E slide in IDC collection(s) {', '.join(collections)}")
    sheet = _sheet(rows)
    bad = sheet.loc[~sheet["slide_id"].str.match(SLIDE_ID_PATTERN), "slide_id"].tolist()
    if bad:
        raise ConfigError(f"IDC's slide names make ids the sheet refuses: {bad[:5]}")
    return sheet


def idc_sizes_mb(sheet: pd.DataFrame, collections: Sequence[str]) -> pd.Series:
    """The sheet's series sizes in MB, by source id (for the totals a user sizes a run by)."""
    index = read_idc_index(collections).set_index("crdc_series_uuid")
    return index.loc[sheet["source_id"], "series_size_MB"]


def write_cohort_sheet(sheet: pd.DataFrame, path: Path) -> None:
    """The sheet as the pipeline reads it (``config.sample_sheet_text``), each row checked as
    a sample row on the way."""
    from hespotex.io.atomic import atomic_path

    records = sheet.astype(object).where(sheet.notna(), None).to_dict("records")
    samples = [
        SampleRow.model_validate({key: value for key, value in record.items() if value is not None})
        for record in records
    ]
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(sample_sheet_text(samples))
