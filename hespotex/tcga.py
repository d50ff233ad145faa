"""TCGA barcodes: a slide's, and the patient and sample it belongs to.

A diagnostic slide's barcode, as GDC names its files, reads ``TCGA-A1-A0SB-01Z-00-DX1``:
project, tissue source site and participant (the patient, ``TCGA-A1-A0SB``), sample type
(``01``, a primary tumour) and vial (``Z`` on slides), portion (``00``), slide (``DX1``). IDC
describes a slide by its patient and series description instead (``FFPE HE TP DX1``); the sheet
it makes names such a slide ``TCGA-A1-A0SB-TP-DX1``, whose sample type is the code's (TP →
01). Bulk RNA-seq is named by aliquot (``TCGA-A1-A0SB-01A-11R-A144-07``). All three meet at the
sample, ``TCGA-A1-A0SB-01``: patient and sample type.
"""

from __future__ import annotations

import re

PATIENT = r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}"
SLIDE_BARCODE = re.compile(rf"^({PATIENT})-(\d{{2}})[A-Z]-\d{{2}}-([A-Z]{{2}}[0-9A-Z]*)\b")
# A second series of the same description gets "-2", "-3" in the sheet.
IDC_SLIDE_ID = re.compile(rf"^({PATIENT})-([A-Z]{{2}})-([A-Z]{{2}}[0-9A-Z]*)(?:-\d+)?$")
ALIQUOT_OR_SAMPLE = re.compile(rf"^({PATIENT})-(\d{{2}})(?:[A-Z](?:-.*)?)?$")
# TCGA's tissue codes in slide descriptions and their sample type.
SAMPLE_TYPE_OF_CODE = {"TP": "01", "TR": "02", "TB": "03", "TM": "06", "NT": "11"}


def slide_barcode(text: str) -> str | None:
    """The slide barcode a GDC file name (or any text) starts with, or None."""
    match = SLIDE_BARCODE.match(text.upper())
    return match.group(0) if match else None


def patient_of(slide_id: str) -> str | None:
    match = re.match(PATIENT, slide_id.upper())
    return match.group(0) if match else None


def sample_of(identifier: str) -> str | None:
    """The sample (``TCGA-XX-XXXX-NN``) a slide barcode, an IDC slide id, an aliquot or a
    sample barcode belongs to; None where it is none of these."""
    text = identifier.upper()
    if match := SLIDE_BARCODE.match(text):
        return f"{match.group(1)}-{match.group(2)}"
    if match := IDC_SLIDE_ID.match(text):
        sample_type = SAMPLE_TYPE_OF_CODE.get(match.group(2))
        return f"{match.group(1)}-{sample_type}" if sample_type else None
    if match := ALIQUOT_OR_SAMPLE.match(text):
        return f"{match.group(1)}-{match.group(2)}"
    return None
