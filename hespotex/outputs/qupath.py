"""QuPath export: spots as detections with their predicted expression, tissue as annotation.

One GeoJSON FeatureCollection in level-0 pixels, the layout QuPath's File > Import objects
reads (and `qupath.lib.io.GsonTools`): each spot a polygon at its true size — a hexagon that
tiles the hexagonal lattice, or a square for the square grid — with
``"objectType": "detection"`` and the configured genes under ``measurements``; the outer
outlines of the tissue mask as one ``"annotation"`` classified ``Tissue``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from skimage.measure import approximate_polygon, find_contours

from hespotex.io.atomic import atomic_path
from hespotex.stages.tiles import spot_outline

# Mask outlines are simplified to within this many mask pixels, to keep the file small.
OUTLINE_TOLERANCE_PX = 0.75


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


def write_qupath_geojson(
    path: Path,
    spot_ids: list[str],
    centres_px: np.ndarray,
    expression: dict[str, np.ndarray],
    layout: str,
    spacing_px: float,
    mask: np.ndarray,
    mask_downsample: float,
    slide_size: tuple[int, int],
) -> None:
    outline = spot_outline(layout, spacing_px)
    features = []
    for index, (spot_id, centre) in enumerate(zip(spot_ids, centres_px, strict=True)):
        features.append(
            {
                "type": "Feature",
                "id": spot_id,
                "geometry": {"type": "Polygon", "coordinates": [_ring(outline + centre)]},
                "properties": {
                    "objectType": "detection",
                    "name": spot_id,
                    "measurements": {
                        gene: round(float(values[index]), 5) for gene, values in expression.items()
                    },
                },
            }
        )
    outlines = tissue_outlines(mask, mask_downsample, slide_size)
    if outlines:
        features.append(
            {
                "type": "Feature",
                "id": "tissue",
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [[ring] for ring in outlines],
                },
                "properties": {
                    "objectType": "annotation",
                    "name": "Tissue",
                    "classification": {"name": "Tissue", "color": [0, 160, 0]},
                },
            }
        )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
