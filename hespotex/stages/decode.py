"""Stage 5, decode: HESpotEx's image stream over the whole slide graph → ``expression.h5ad``.

Each gene's values come from the model ``decode.serve`` names: the image stream, the linear
probe the checkpoint carries, their mean (``ensemble``, the default), or (``best``) whichever of
the three scored best on held-out spots for that gene; ``var`` records the model served
(``served_model``) beside every score.

The AnnData is what scanpy and squidpy users expect from Visium: spots × genes,
``obsm['spatial']`` in level-0 pixels, and ``uns['spatial'][slide_id]`` with the thumbnail
(as ``hires``) and its scale factor, so ``scanpy.pl.spatial`` draws it unchanged. ``var`` holds
each gene's scores from the checkpoint (``validation_pearson``, ``cv_pearson``), and
``outputs.min_gene_pearson`` leaves out the genes below it. Spot
diameter is the grid spacing, so spots drawn at that size tile the tissue. What is drawn from
it (heatmaps, top patches, QuPath GeoJSON, qc.json) is ``hespotex.outputs``' work.

Values are rounded to ``outputs.expression_step`` (1/1024 in log1p CPM units, far below the
model's error) and written gzip-compressed, still float32 for every scanpy function: 1.7×
smaller than raw float32 at the full panel (``benchmarks/RESULTS.md``, "The full gene panel").
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from hespotex import __version__
from hespotex.config import NucleusCounter, PipelineConfig, ServedModel
from hespotex.encoder.devices import pick_device
from hespotex.encoder.identity import EncoderIdentity
from hespotex.encoder.stain import StainSetting
from hespotex.errors import ConfigError, InputDataError
from hespotex.io.atomic import atomic_path, read_png
from hespotex.io.records import QcSummary, TissueRecord, read_spots
from hespotex.io.stores import FeatureStore, StoreKeys, read_feature_store, read_graph_store
from hespotex.network.checkpoint import (
    SERVABLE,
    Checkpoint,
    CheckpointMeta,
    check_checkpoint_encoder,
    check_checkpoint_stain,
    load_checkpoint,
)
from hespotex.network.serving import served_prediction
from hespotex.network.streams import nucleus_scale
from hespotex.paths import SlidePaths

logger = logging.getLogger(__name__)


def gene_table(meta: CheckpointMeta, served: list[ServedModel]) -> pd.DataFrame:
    """``var``: one row per gene: the model served, its trusted score (``served_pearson``),
    and a column per score the checkpoint carries (NaN: none)."""
    return pd.DataFrame(
        {
            "served_model": pd.Categorical(
                [model.value for model in served], categories=[m.value for m in SERVABLE]
            ),
            "served_pearson": np.array(meta.served_scores(served), dtype=float),
            **{name: np.array(values, dtype=float) for name, values in meta.gene_scores.items()},
        },
        index=pd.Index(meta.genes, name=None),
    )


def build_anndata(
    prediction: np.ndarray,
    var: pd.DataFrame,
    spots: pd.DataFrame,
    record: TissueRecord,
    thumbnail: np.ndarray,
    spot_diameter_px: float,
    provenance: dict,
) -> ad.AnnData:
    obs = spots.set_index("spot_id")
    obs.index.name = None
    adata = ad.AnnData(X=prediction.astype(np.float32), obs=obs, var=var)
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
    counted_with = store.attributes.get(StoreKeys.NUCLEUS_COUNTER, NucleusCounter.NONE)
    if store.nucleus_counts is None or counted_with != meta.nucleus_counter:
        raise InputDataError(
            store_path,
            f"the checkpoint scales predictions by nucleus counts ({meta.nucleus_counter}) "
            f"but this feature store was written with nucleus_counter: {counted_with}; "
            "rerun the features stage (snakemake --forcerun features)",
        )
    return store.nucleus_counts


def load_decoder(config: PipelineConfig) -> Checkpoint:
    """The configured checkpoint's models on the decode device (a job decoding many slides
    loads it once: with 5,457 genes its LSTM alone is 1.4 GB)."""
    if config.decode.checkpoint is None:
        raise ConfigError("decode.checkpoint is not set: train one with `hespotex train`")
    model, probe, meta = load_checkpoint(config.decode.checkpoint)
    device = pick_device(config.decode.device)
    return Checkpoint(model.to(device), probe.to(device), meta)


def run_decode(
    slide_id: str,
    config: PipelineConfig,
    decoder: Checkpoint | None = None,
) -> ad.AnnData:
    model, probe, meta = decoder or load_decoder(config)
    served = meta.served_models(config.decode.serve, config.decode.checkpoint)
    paths = SlidePaths(config.results, slide_id)
    record = TissueRecord.read(paths.tissue_record)
    spots = read_spots(paths.spots)
    store = read_feature_store(paths.features)
    edge_index, graph_attributes = read_graph_store(paths.graph)
    store_encoder = EncoderIdentity.from_record(
        store.attributes.get(StoreKeys.ENCODER), paths.features
    )
    check_checkpoint_encoder(
        config.decode.checkpoint, meta, f"the feature store {paths.features}", store_encoder
    )
    stain = StainSetting.from_record(store.attributes.get(StoreKeys.STAIN), paths.features)
    check_checkpoint_stain(
        config.decode.checkpoint, meta, f"the feature store {paths.features}", stain
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
    nucleus_counts = nucleus_counts_for(meta, store, paths.features)
    scale = None if nucleus_counts is None else nucleus_scale(torch.from_numpy(nucleus_counts))
    device = next(model.parameters()).device
    features = torch.from_numpy(store.features).to(device)
    prediction = model.predict(
        features, torch.from_numpy(edge_index).to(device), config.decode.spot_chunk, scale
    ).numpy()
    if any(model_name is not ServedModel.HESPOTEX for model_name in served):
        prediction = served_prediction(prediction, probe.predict(features), served)
    step = config.outputs.expression_step
    if step:
        prediction = np.round(prediction / step) * step
    thumbnail = read_png(paths.thumbnail)
    provenance = {
        "hespotex_version": __version__,
        "checkpoint": str(config.decode.checkpoint),
        "encoder": store_encoder.model_dump(mode="json"),
        "encoder_description": store_encoder.describe(),
        "stain_normalisation": stain.describe(),
        "values": f"predicted {meta.normalisation} expression (target sum {meta.target_sum:g} "
        f"over {meta.library_size.value.replace('_', ' ')})",
        "mpp": record.mpp,
        "mpp_source": record.mpp_source,
        "grid_layout": config.grid.layout,
        "spot_spacing_um": config.grid.spacing_um,
        "patch_um": config.features.patch_um,
        "trained_on": meta.trained_on,
        "gene_scores": meta.gene_score_sources,
        "served": config.decode.serve.value,
        "served_counts": {model.value: served.count(model) for model in SERVABLE},
        "min_gene_pearson": config.outputs.min_gene_pearson,
        "quality_control": (
            QcSummary.read(paths.spot_qc).as_record() if paths.spot_qc.is_file() else {}
        ),
    }
    kept = meta.genes_kept(
        config.outputs.min_gene_pearson, config.decode.serve, config.decode.checkpoint
    )
    if len(kept) < len(meta.genes):
        logger.info(
            "outputs.min_gene_pearson %s: keeping %d of %d genes (by %s)",
            config.outputs.min_gene_pearson,
            len(kept),
            len(meta.genes),
            meta.trusted_score(),
        )
    columns = pd.Index(meta.genes).get_indexer(kept)
    adata = build_anndata(
        prediction[:, columns],
        gene_table(meta, served).loc[kept],
        spots,
        record,
        thumbnail,
        spot_diameter_px=config.grid.spacing_um / record.mpp,
        provenance=provenance,
    )
    with atomic_path(paths.expression) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    logger.info("wrote %d spots × %d genes to %s", *adata.shape, paths.expression)
    return adata
