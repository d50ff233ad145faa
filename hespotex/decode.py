"""Stage 5, decode: HESpotEx's image stream over the whole slide graph → ``expression.h5ad``.

The AnnData is what scanpy and squidpy users expect from Visium: spots × genes,
``obsm['spatial']`` in level-0 pixels, and ``uns['spatial'][slide_id]`` with the thumbnail
(as ``hires``) and its scale factor, so ``scanpy.pl.spatial`` draws it unchanged. Spot
diameter is the grid spacing, so spots drawn at that size tile the tissue. Beside it,
``qupath.geojson`` carries the spots and the tissue outline for QuPath, ``heatmaps/`` and
``top_patches/`` show the configured genes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from PIL import Image

from hespotex import __version__
from hespotex.atomic import atomic_path
from hespotex.checkpoint import CheckpointMeta, check_encoder_matches, load_checkpoint
from hespotex.config import NucleusCounter, PipelineConfig
from hespotex.encoders import pick_device
from hespotex.errors import ConfigError, InputDataError
from hespotex.montage import write_top_patch_montages
from hespotex.paths import SlidePaths
from hespotex.plots import write_heatmap
from hespotex.qupath import write_qupath_geojson
from hespotex.slide import Slide
from hespotex.store import FeatureStore, read_feature_store, read_graph_store
from hespotex.tiling import read_spots
from hespotex.tissue import TissueRecord, read_mask

logger = logging.getLogger(__name__)


def build_anndata(
    prediction: np.ndarray,
    genes: list[str],
    spots: pd.DataFrame,
    record: TissueRecord,
    thumbnail: np.ndarray,
    spot_diameter_px: float,
    provenance: dict,
) -> ad.AnnData:
    obs = spots.set_index("spot_id")
    obs.index.name = None
    adata = ad.AnnData(
        X=prediction.astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(genes, name=None)),
    )
    adata.obsm["spatial"] = spots[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    adata.uns["spatial"] = {
        record.slide_id: {
            "images": {"hires": thumbnail},
            "scalefactors": {
                "tissue_hires_scalef": 1.0 / record.mask_downsample,
                "spot_diameter_fullres": spot_diameter_px,
            },
            "metadata": {"slide_path": record.slide_path, "mpp": record.mpp},
        }
    }
    adata.uns["hespotex"] = provenance
    return adata


def nucleus_counts_for(
    meta: CheckpointMeta, store: FeatureStore, store_path: Path
) -> np.ndarray | None:
    """The spots' nucleus counts when the checkpoint scales by them: counted by the features
    stage with the same counter, or the store is stale for this checkpoint."""
    if meta.nucleus_counter == NucleusCounter.NONE:
        return None
    counted_with = store.attributes.get("nucleus_counter", NucleusCounter.NONE)
    if store.nucleus_counts is None or counted_with != meta.nucleus_counter:
        raise InputDataError(
            store_path,
            f"the checkpoint scales predictions by nucleus counts ({meta.nucleus_counter}) "
            f"but this feature store was written with nucleus_counter: {counted_with}; "
            "rerun the features stage (snakemake --forcerun features)",
        )
    return store.nucleus_counts


def run_decode(slide: Slide, slide_id: str, config: PipelineConfig) -> ad.AnnData:
    if config.decode.checkpoint is None:
        raise ConfigError("decode.checkpoint is not set: train one with `hespotex train`")
    paths = SlidePaths(config.results, slide_id)
    record = TissueRecord.read(paths.tissue_record)
    spots = read_spots(paths.spots)
    store = read_feature_store(paths.features)
    edge_index, graph_attributes = read_graph_store(paths.graph)
    model, meta = load_checkpoint(config.decode.checkpoint)
    check_encoder_matches(
        config.decode.checkpoint,
        meta,
        store.attributes["encoder"],
        store.attributes["encoder_weights_sha256"],
        f"the feature store {paths.features}",
    )
    if store.features.shape[0] != len(spots):
        raise InputDataError(
            paths.features, f"{store.features.shape[0]} feature rows for {len(spots)} spots"
        )
    if graph_attributes.get("k") != meta.graph_k:
        logger.warning(
            "the spot graph has k = %s but the checkpoint was trained with k = %d",
            graph_attributes.get("k"),
            meta.graph_k,
        )
    missing = [gene for gene in config.outputs.genes if gene not in meta.genes]
    if missing:
        raise ConfigError(
            f"outputs.genes: {', '.join(missing)} not predicted by checkpoint "
            f"{config.decode.checkpoint}"
        )
    nucleus_counts = nucleus_counts_for(meta, store, paths.features)
    device = pick_device(config.decode.device)
    model = model.to(device)
    prediction = model.predict(
        torch.from_numpy(store.features).to(device),
        torch.from_numpy(edge_index).to(device),
        config.decode.spot_chunk,
        None if nucleus_counts is None else torch.from_numpy(nucleus_counts),
    ).numpy()
    with Image.open(paths.thumbnail) as image:
        thumbnail = np.asarray(image.convert("RGB"))
    provenance = {
        "hespotex_version": __version__,
        "checkpoint": str(config.decode.checkpoint),
        "encoder": store.attributes["encoder_description"],
        "encoder_random_weights": bool(store.attributes["encoder_random_weights"]),
        "values": f"predicted {meta.normalisation} expression (target sum {meta.target_sum:g})",
        "mpp": record.mpp,
        "mpp_source": record.mpp_source,
        "grid_layout": config.grid.layout,
        "spot_spacing_um": config.grid.spacing_um,
        "patch_um": config.features.patch_um,
        "trained_on": meta.trained_on,
    }
    adata = build_anndata(
        prediction,
        meta.genes,
        spots,
        record,
        thumbnail,
        spot_diameter_px=config.grid.spacing_um / record.mpp,
        provenance=provenance,
    )
    predictions = {gene: adata[:, gene].X.ravel() for gene in config.outputs.genes}
    with atomic_path(paths.heatmaps) as tmp:
        tmp.mkdir()
        for gene in config.outputs.genes:
            write_heatmap(tmp / paths.heatmap(gene).name, adata, slide_id, gene, config.grid.layout)
    with atomic_path(paths.top_patches) as tmp:
        tmp.mkdir()
        if config.outputs.top_patches:
            write_top_patch_montages(
                slide,
                adata.obsm["spatial"],
                predictions,
                config.outputs.top_patches,
                config.features,
                tmp,
            )
    write_qupath_geojson(
        paths.qupath,
        list(adata.obs_names),
        adata.obsm["spatial"],
        predictions,
        config.grid.layout,
        config.grid.spacing_um / record.mpp,
        read_mask(paths.tissue_mask),
        record.mask_downsample,
        (record.width_px, record.height_px),
    )
    with atomic_path(paths.expression) as tmp:
        adata.write_h5ad(tmp)
    logger.info("wrote %d spots × %d genes to %s", *adata.shape, paths.expression)
    return adata
