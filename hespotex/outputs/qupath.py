"""QuPath export: spots as detections with their predicted expression, tissue as annotation.

One GeoJSON FeatureCollection in level-0 pixels, the layout QuPath's File > Import objects
reads (and `qupath.lib.io.GsonTools`): each spot a polygon at its true size — a hexagon that
tiles the hexagonal lattice, or a square for the square grid — with
``"objectType": "detection"``, the configured genes and the spot's QC scores under
``measurements``, and a class when quality control flagged it (``QC flagged: blur``); the
spots quality control dropped, with their scores, classed by why (``QC dropped: ink``); the
outer outlines of the tissue mask, the ink and the folds as ``"annotation"``s classified
``Tissue``, ``Ink`` and ``Fold``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.measure import approximate_polygon, find_contours

from hespotex.io.atomic import atomic_path
from hespotex.io.records import spot_outline

# Mask outlines are simplified to within this many mask pixels, to keep the file small.
OUTLINE_TOLERANCE_PX = 0.75
QC_MEASUREMENTS = ("tissue_fraction", "ink_fraction", "fold_fraction", "blur_score")
QC_CLASS_RGB = {"flagged": [255, 145, 0], "dropped": [255, 23, 68]}
AREA_RGB = {"Tissue": [0, 160, 0], "Ink": [13, 71, 161], "Fold": [255, 0, 255]}


def _ring(points: np.ndarray) -> list[list[float]]:
    closed = np.vstack([points, points[:1]])
    return np.round(closed, 2).tolist()


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def tissue_outlines(
    mask: np.ndarray, downsample: float, slide_size: tuple[int, int]
) -> list[list[list[float]]]:
    """Outer outlines of the mask's tissue regions, in level-0 pixels (x, y), inside the
    slide (the mask's last pixel may reach a little past the slide's edge). Holes are left
    out: as separate polygons they would overlap their region's, which QuPath rejects."""
    padded = np.pad(mask.astype(np.uint8), 1)
    contours = [contour for contour in find_contours(padded, 0.5) if len(contour) >= 4]
    if not contours:
        return []
    # find_contours keeps tissue on the same side of every contour, so outer outlines and
    # holes turn opposite ways; the largest contour is an outer one.
    areas = [_signed_area(contour) for contour in contours]
    outer_sign = np.sign(max(areas, key=abs))
    rings = []
    for contour, area in zip(contours, areas, strict=True):
        simplified = approximate_polygon(contour, OUTLINE_TOLERANCE_PX)
        if np.sign(area) != outer_sign or len(simplified) < 4:
            continue
        # (row, col) in the padded mask; pixel centres are at +0.5.
        xy = np.clip((simplified[:, ::-1] - 1 + 0.5) * downsample, 0, slide_size)
        rings.append(np.round(xy, 1).tolist())
    return rings


def _spot_feature(spot_id: str, ring: np.ndarray, measurements: dict, qc: str, reasons: str):
    feature = {
        "type": "Feature",
        "id": spot_id,
        "geometry": {"type": "Polygon", "coordinates": [_ring(ring)]},
        "properties": {"objectType": "detection", "name": spot_id, "measurements": measurements},
    }
    if qc != "ok":
        # QuPath shows a detection's class by colour and lists it in the class filter.
        name = f"QC {qc}: {reasons}"
        feature["properties"]["classification"] = {"name": name, "color": QC_CLASS_RGB[qc]}
    return feature


def _area_feature(name: str, outlines: list, rgb: list[int]) -> dict:
    return {
        "type": "Feature",
        "id": name.lower().replace(" ", "_"),
        "geometry": {"type": "MultiPolygon", "coordinates": [[ring] for ring in outlines]},
        "properties": {
            "objectType": "annotation",
            "name": name,
            "classification": {"name": name, "color": rgb},
        },
    }


def _qc_measurements(row) -> dict[str, float]:
    return {
        column: round(float(row[column]), 4)
        for column in QC_MEASUREMENTS
        if column in row and np.isfinite(row[column])
    }


def write_qupath_geojson(
    path: Path,
    spots: pd.DataFrame,
    expression: dict[str, np.ndarray],
    dropped: pd.DataFrame,
    layout: str,
    spacing_px: float,
    areas: dict[str, np.ndarray],
    mask_downsample: float,
    slide_size: tuple[int, int],
) -> None:
    """``spots`` (spot_id, x_px, y_px and the QC columns of ``spots.tsv``) as detections with
    their expression and QC scores as measurements, flagged ones classified; the ``dropped``
    spots as detections with their scores only, classified by why; each of ``areas`` (the
    tissue, ink, fold masks, by name) as an annotation of its outlines."""
    outline = spot_outline(layout, spacing_px)
    features = []
    centres = spots[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    for index, row in enumerate(spots.to_dict("records")):
        measurements = {
            gene: round(float(values[index]), 5) for gene, values in expression.items()
        } | _qc_measurements(row)
        features.append(
            _spot_feature(
                row["spot_id"],
                outline + centres[index],
                measurements,
                row.get("qc", "ok"),
                row.get("qc_reasons", ""),
            )
        )
    for row in dropped.to_dict("records"):
        centre = np.array([row["x_px"], row["y_px"]], dtype=np.float64)
        features.append(
            _spot_feature(
                row["spot_id"],
                outline + centre,
                _qc_measurements(row),
                "dropped",
                row["qc_reasons"],
            )
        )
    for name, mask in areas.items():
        outlines = tissue_outlines(mask, mask_downsample, slide_size)
        if outlines:
            features.append(_area_feature(name, outlines, AREA_RGB.get(name, [128, 128, 128])))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
