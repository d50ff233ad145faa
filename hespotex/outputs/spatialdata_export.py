"""Optional SpatialData Zarr of a slide's predictions, for napari-spatialdata and spatialdata.

spatialdata cannot share an environment with tiatoolbox 2.1.3 (their dask pins do not
overlap), so this module runs under a second interpreter (``outputs.spatialdata_python``;
`make viewers` builds one in .venv-viewers) and imports only that environment's packages and
nothing else of hespotex. It reads the slide's ``expression.h5ad`` and writes, in level-0
pixels (the ``global`` coordinate system):

- ``images/{slide}``: the H&E thumbnail as a multiscale image, scaled to level-0 pixels;
- ``shapes/{slide}_spots``: the spots as circles of the grid spacing's diameter;
- ``tables/expression``: the predicted expression, annotating the spots.

    python -m hespotex.outputs.spatialdata_export EXPRESSION_H5AD OUT_ZARR SLIDE_ID
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("expression", type=Path, help="the slide's expression.h5ad")
    parser.add_argument("out", type=Path, help="the SpatialData Zarr to write")
    parser.add_argument("slide_id")
    args = parser.parse_args(argv)
    try:
        write_spatialdata(args.expression, args.out, args.slide_id)
    except (OSError, KeyError, ValueError) as error:
        print(f"spatialdata export of {args.expression} failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
