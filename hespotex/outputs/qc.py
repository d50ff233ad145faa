"""``qc.json``: what a slide's results rest on and what each stage cost.

The outputs stage, the last, ends by writing ``qc.json``, which gathers the stage records' times
and memory (``io.stage_records``) with the slide's spot count, tissue area, resolution (and
where it came from), its stain check, the ink and fold areas and the tiles stage's quality
control (spots kept, flagged and dropped, shares per artefact, the slide's verdict), the stain
normalisation its patches went through and the encoder and checkpoint identities, so a result
can be traced and a slow or odd slide spotted from one file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hespotex import __version__
from hespotex.config import PipelineConfig
from hespotex.encoder.identity import EncoderIdentity
from hespotex.encoder.stain import StainSetting
from hespotex.io.atomic import write_json
from hespotex.io.checksum import cached_sha256
from hespotex.io.records import TissueRecord
from hespotex.io.stage_records import read_stage_records
from hespotex.io.stores import StoreKeys
from hespotex.network.checkpoint import read_checkpoint_meta
from hespotex.paths import SlidePaths


def _feature_store_records(path: Path) -> tuple[EncoderIdentity, StainSetting, dict | None]:
    """The store's encoder, stain normalisation and the stain measured on the slide."""
    import zarr

    attributes = zarr.open_group(str(path), mode="r").attrs
    return (
        EncoderIdentity.from_record(attributes.get(StoreKeys.ENCODER), path),
        StainSetting.from_record(attributes.get(StoreKeys.STAIN), path),
        attributes.get(StoreKeys.STAIN_SOURCE),
    )


def write_slide_qc(config: PipelineConfig, slide_id: str) -> dict:
    paths = SlidePaths(config.results, slide_id)
    record = TissueRecord.read(paths.tissue_record)
    encoder, stain, stain_source = _feature_store_records(paths.features)
    checkpoint = config.decode.checkpoint
    meta = read_checkpoint_meta(checkpoint)
    timings = read_stage_records(paths)
    with paths.spots.open() as spots:
        spot_count = sum(1 for _ in spots) - 1
    qc = {
        "slide_id": slide_id,
        "slide_path": record.slide_path,
        "reader": record.reader,
        "size_px": [record.width_px, record.height_px],
        "mpp": record.mpp,
        "mpp_source": record.mpp_source,
        "tissue_area_mm2": record.tissue_area_mm2,
        "stain_check": record.stain_check,
        "ink_area_mm2": record.ink_area_mm2,
        "fold_area_mm2": record.fold_area_mm2,
        "quality_control": (
            json.loads(paths.spot_qc.read_text()) if paths.spot_qc.is_file() else None
        ),
        "spots": spot_count,
        "grid": {"layout": config.grid.layout, "spacing_um": config.grid.spacing_um},
        "encoder": {
            **encoder.model_dump(mode="json"),
            "description": encoder.describe(),
            "random_weights": encoder.is_random,
        },
        "stain_normalisation": {
            **stain.model_dump(mode="json"),
            "description": stain.describe(),
            "measured_on_slide": stain_source,
        },
        "checkpoint": {
            "path": str(checkpoint),
            "sha256": cached_sha256(checkpoint),
            "genes": len(meta.genes),
            "genes_kept": len(
                meta.genes_kept(config.outputs.min_gene_pearson, config.decode.serve, checkpoint)
            ),
            "trained_on": meta.trained_on,
            "gene_scores": {
                name: {
                    "source": meta.gene_score_sources.get(name, ""),
                    "median": float(np.median([value for value in values if value is not None])),
                }
                for name, values in meta.gene_scores.items()
                if any(value is not None for value in values)
            },
        },
        "timings": {
            stage: {"seconds": entry["seconds"], "peak_rss_mb": entry["peak_rss_mb"]}
            for stage, entry in timings.items()
        },
        "total_seconds": round(sum(entry["seconds"] for entry in timings.values()), 3),
        "hespotex_version": __version__,
    }
    write_json(paths.qc, qc)
    return qc
