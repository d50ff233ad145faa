"""Optional SpatialData Zarr of a slide's predictions, for napari-spatialdata and spatialdata.

spatialdata cannot share an environment with tiatoolbox 2.1.3 (their dask pins do not
overlap), so this module runs under a second interpreter (``outputs.spatialdata_python``;
`make viewers` builds one in .venv-viewers) and imports only that environment's packages and
nothing else of hespotex. It reads the slide's ``expression.h5ad`` and writes, in level-0
pixels (the ``global`` coordinate system):

- ``images/{slide}``: the H&E thumbnail as a multiscale image, scaled to level-0 pixels;
- ``shapes/{slide}_spots``: the spots as circles of the grid spacing's diameter;
- ``tables/expression``: the predicted expression, annotating the spots.

    python spatialdata_export.py --results R --slides-from PREDICT_MANIFEST --manifest OUT
        --failures LOG

exports the slides a predict job's manifest lists as done.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

TMP_SUFFIX = ".tmp"


def build_spatialdata(expression: Path, slide_id: str):
    import anndata as ad
    import geopandas as gpd
    import numpy as np
    from shapely.geometry import Point
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    adata = ad.read_h5ad(expression)
    library = adata.uns["spatial"][slide_id]
    thumbnail = np.asarray(library["images"]["hires"])
    to_level0 = 1.0 / float(library["scalefactors"]["tissue_hires_scalef"])
    image = Image2DModel.parse(
        np.moveaxis(thumbnail, -1, 0),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=[2, 2],
        transformations={"global": Scale([to_level0, to_level0], axes=("y", "x"))},
    )
    centres = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    shapes_name = f"{slide_id}_spots"
    spots = gpd.GeoDataFrame(
        {
            "geometry": [Point(x, y) for x, y in centres],
            "radius": float(library["scalefactors"]["spot_diameter_fullres"]) / 2,
        },
        index=adata.obs_names.copy(),
    )
    shapes = ShapesModel.parse(spots)
    table = ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy())
    table.obsm["spatial"] = centres
    table.obs["region"] = shapes_name
    table.obs["region"] = table.obs["region"].astype("category")
    table.obs["spot_id"] = adata.obs_names.to_numpy()
    table.uns["hespotex"] = dict(adata.uns["hespotex"])
    table = TableModel.parse(table, region=shapes_name, region_key="region", instance_key="spot_id")
    return SpatialData(
        images={slide_id: image}, shapes={shapes_name: shapes}, tables={"expression": table}
    )


def write_spatialdata(expression: Path, out: Path, slide_id: str) -> None:
    out = Path(out)
    tmp = out.with_name(out.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_spatialdata(expression, slide_id).write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def done_slides(manifest: Path) -> list[str]:
    """The slides a predict job's manifest (TSV: slide_id, status, ...) lists as done."""
    with open(manifest, newline="") as handle:
        return [row["slide_id"] for row in csv.DictReader(handle, delimiter="\t")
                if row["status"] == "done"]  # fmt: skip


def export_shard(results: Path, manifest: Path, out_manifest: Path, failures: Path) -> list[str]:
    """Export every done slide of the shard whose export is missing or older than its map; a
    slide that fails is logged, recorded in ``failures`` and the others go on. Returns the
    failed slides."""
    rows, failed = [], []
    for slide_id in done_slides(manifest):
        expression = results / slide_id / "expression.h5ad"
        out = results / slide_id / "spatialdata.zarr"
        if out.is_dir() and out.stat().st_mtime >= expression.stat().st_mtime:
            rows.append((slide_id, "done", ""))
            continue
        try:
            write_spatialdata(expression, out, slide_id)
            rows.append((slide_id, "done", ""))
        except Exception as error:  # a slide must fail alone, whatever it raises
            cause = f"{type(error).__name__}: {error}"
            print(f"spatialdata export of {expression} failed: {cause}", file=sys.stderr)
            rows.append((slide_id, "failed", cause))
            failed.append(slide_id)
            with open(failures, "a") as log:
                log.write(json.dumps({"slide_id": slide_id, "cause": cause}) + "\n")
    tmp = out_manifest.with_name(out_manifest.name + TMP_SUFFIX)
    tmp.write_text("slide_id\tstatus\tcause\n" + "".join("\t".join(row) + "\n" for row in rows))
    tmp.rename(out_manifest)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="the results folder")
    parser.add_argument("--slides-from", type=Path, required=True, help="a predict manifest")
    parser.add_argument("--manifest", type=Path, required=True, help="this export's manifest")
    parser.add_argument("--failures", type=Path, required=True, help="failure log (appended)")
    args = parser.parse_args(argv)
    failed = export_shard(args.results, args.slides_from, args.manifest, args.failures)
    print(f"exported the shard's done slides; {len(failed)} failed: {failed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
