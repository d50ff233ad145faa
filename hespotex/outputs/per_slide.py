"""The outputs stage: what a decoded slide's users open beside ``expression.h5ad``.

For each gene of ``outputs.genes``: a heatmap over the thumbnail (``heatmaps/``) and the
patches of highest and lowest prediction (``top_patches/``); for every spot, its predicted
genes and quality-control scores as QuPath measurements, with the dropped spots and the
outlines of tissue, ink and folds (``qupath.geojson``). Each writer takes
the decoded AnnData and works alone; this module reads the slide's files and calls them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from hespotex.config import PipelineConfig
from hespotex.encoder.stain import StainProfile, StainSetting, StainTransform
from hespotex.errors import ConfigError
from hespotex.io.records import SPOT_COLUMNS, TissueRecord, read_maps, read_spots
from hespotex.io.slide import Slide
from hespotex.io.stores import StoreKeys
from hespotex.outputs.heatmaps import write_heatmaps
from hespotex.outputs.montages import write_top_patch_montages
from hespotex.outputs.qupath import write_qupath_geojson
from hespotex.paths import SlidePaths

logger = logging.getLogger(__name__)


def gene_predictions(adata: ad.AnnData, genes: list[str], source) -> dict[str, np.ndarray]:
    """Each of ``genes``' predicted values over the spots; a gene the map lacks is an error
    naming it and ``source``."""
    missing = [gene for gene in genes if gene not in adata.var_names]
    if missing:
        raise ConfigError(f"outputs.genes: {', '.join(missing)} not predicted in {source}")
    return {gene: np.asarray(adata[:, gene].X).ravel() for gene in genes}


def feature_stain_transform(path: Path) -> StainTransform | None:
    """The stain mapping the features stage applied to this slide's patches (the setting and
    the stain it measured on the slide, both in the store's attributes), or None."""
    import zarr

    attributes = zarr.open_group(str(path), mode="r").attrs
    setting = StainSetting.from_record(attributes.get(StoreKeys.STAIN), path)
    source = attributes.get(StoreKeys.STAIN_SOURCE)
    if setting.target is None or source is None:
        return None
    return StainTransform(StainProfile.model_validate(source), setting.target)


def write_slide_outputs(slide: Slide, slide_id: str, config: PipelineConfig) -> None:
    paths = SlidePaths(config.results, slide_id)
    adata = ad.read_h5ad(paths.expression)
    record = TissueRecord.read(paths.tissue_record)
    genes = config.outputs.genes
    predictions = gene_predictions(adata, genes, paths.expression)
    centres = np.asarray(adata.obsm["spatial"])
    write_heatmaps(paths.heatmaps, adata, slide_id, genes, config.grid.layout)
    write_top_patch_montages(
        paths.top_patches,
        slide,
        centres,
        predictions,
        config.outputs.top_patches,
        config.features,
        feature_stain_transform(paths.features),
    )
    maps = read_maps(paths, record)
    dropped = (
        read_spots(paths.dropped_spots)
        if paths.dropped_spots.is_file()
        else pd.DataFrame(columns=SPOT_COLUMNS)
    )
    write_qupath_geojson(
        paths.qupath,
        adata.obs.rename_axis("spot_id").reset_index(),
        predictions,
        dropped,
        config.grid.layout,
        config.grid.spacing_um / record.mpp,
        {"Tissue": maps.tissue, "Ink": maps.ink > 0, "Fold": maps.fold},
        record.mask_downsample,
        (record.width_px, record.height_px),
    )
    logger.info(
        "wrote %d heatmap(s), top patches and QuPath GeoJSON for %d spots", len(genes), len(adata)
    )
