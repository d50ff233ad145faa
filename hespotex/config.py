"""Typed pipeline configuration and sample sheet.

One pydantic model validates ``config/config.yaml`` (unknown keys are errors), and is passed
whole into the stages; the sample sheet is validated row by row by ``SampleRow``. These are
the only validators: the Snakefile calls them too, before any job starts.
"""

from __future__ import annotations

import io
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from hespotex.encoder_specs import CUSTOM, ENCODER_PRESETS, EncoderName, EncoderSpec
from hespotex.errors import ConfigError
from hespotex.paths import COHORT_FOLDER
from hespotex.units import MPP_MAX, Microns, Mpp

SLIDE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
RANDOM_WEIGHTS = "random"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckAction(StrEnum):
    """What a slide-level check does with a slide that fails it: refuse the slide, warn and
    go on, or only record the numbers."""

    ERROR = "error"
    WARN = "warn"
    OFF = "off"


class ArtifactAction(StrEnum):
    """What becomes of a spot whose patch shows an artefact."""

    DROP = "drop"  # neither encoded nor predicted; recorded in spots_dropped.tsv
    FLAG = "flag"  # predicted, and marked in every output
    OFF = "off"  # not measured


class InkColour(StrEnum):
    """Marker colours told apart from H&E; black also takes in dark debris and glass edges,
    which share its colour."""

    GREEN = "green"
    BLUE = "blue"
    RED = "red"
    BLACK = "black"


class InkConfig(_Section):
    """Marker ink, found by its colour before tissue is thresholded."""

    action: ArtifactAction = Field(
        ArtifactAction.DROP,
        description="drop, flag or off (off: ink is not looked for, so it is judged as tissue, "
        "by the stain check too)",
    )
    colours: tuple[InkColour, ...] = Field(
        tuple(InkColour),
        min_length=1,
        description="the colours looked for; red shares its colour with blood and intense "
        "eosin, so leave it out for haemorrhagic tissue",
    )
    max_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="a spot whose patch is more than this share ink is acted on (ink in a "
        "patch shifts its features)",
    )
    min_area_um2: float = Field(
        20000.0, ge=0, description="ink pieces smaller than this are ignored (µm²)"
    )


class FoldConfig(_Section):
    """Tissue folded over itself: much darker than the tissue around it."""

    action: ArtifactAction = Field(ArtifactAction.FLAG, description="drop, flag or off")
    darkness: float = Field(
        1.8,
        gt=1,
        description="a tissue pixel whose optical density is this many times the mean of the "
        "ordinary tissue within neighbourhood_um around it (and 1.5 times the slide's median) "
        "is fold",
    )
    neighbourhood_um: float = Field(2000.0, gt=0, description="the surrounding tissue, µm")
    max_fraction: float = Field(
        0.25, ge=0, le=1, description="a spot whose patch is more than this share fold is acted on"
    )


class BlurConfig(_Section):
    """Out-of-focus fields, scored on each spot's field at one physical resolution."""

    action: ArtifactAction = Field(ArtifactAction.FLAG, description="drop, flag or off")
    mpp: float = Field(
        1.0,
        gt=0,
        le=8,
        description="µm per pixel the focus is measured at, the same on 20x and 40x scans",
    )
    field_um: float = Field(112.0, gt=0, description="side of the square field scored, µm")
    max_score: float = Field(
        0.5,
        ge=0,
        le=1,
        description="blur score (Crete et al.'s blur effect: 0 sharp, 1 fully blurred) above "
        "which a spot is acted on",
    )


class ArtifactsConfig(_Section):
    """Quality control of the slide: per-spot scores and decisions, and a slide verdict."""

    ink: InkConfig = InkConfig()
    fold: FoldConfig = FoldConfig()
    blur: BlurConfig = BlurConfig()
    slide_check: CheckAction = Field(
        CheckAction.ERROR,
        description="error: refuse a slide whose tissue spots are mostly under ink, folded or "
        "blurred (the measured shares in the message); warn: log them and go on; off: record",
    )
    max_slide_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="the share of a slide's tissue spots one artefact may take before the "
        "slide check acts",
    )


class TissueConfig(_Section):
    """Tissue detection on a low-resolution copy of the slide."""

    mask_mpp: float = Field(8.0, gt=0, le=100, description="µm per pixel of the tissue mask")
    min_saturation: float = Field(
        0.07,
        ge=0,
        le=1,
        description="floor under the Otsu threshold on HSV saturation, so a blank slide "
        "finds no tissue instead of thresholding its noise",
    )
    closing_um: float = Field(24.0, ge=0, description="radius of the morphological closing")
    min_object_um2: float = Field(
        20000.0, ge=0, description="tissue pieces smaller than this are dropped (µm²)"
    )
    min_hole_um2: float = Field(
        20000.0, ge=0, description="holes in tissue smaller than this are filled (µm²)"
    )
    stain_check: CheckAction = Field(
        CheckAction.ERROR,
        description="error: refuse a slide whose tissue is clearly not H&E (IHC's DAB brown, "
        "or another stain), naming the measured numbers; warn: log them and go on; off: only "
        "record them (a dark fluorescence slide is refused whatever this says)",
    )
    artifacts: ArtifactsConfig = ArtifactsConfig()


class GridConfig(_Section):
    """The spot grid laid over the tissue."""

    layout: Literal["hex", "square"] = Field("hex", description="hex: Visium-like lattice")
    spacing_um: float = Field(100.0, gt=0, description="spot centre-to-centre distance in µm")
    min_tissue_fraction: float = Field(
        0.5, ge=0, le=1, description="keep a spot if this share of its patch is tissue"
    )

    @property
    def spacing(self) -> Microns:
        return Microns(self.spacing_um)


class EncoderConfig(_Section):
    """The frozen image encoder: a preset of ``ENCODER_PRESETS`` (hespotex/encoder_specs.py),
    or ``custom`` with its spec. Weights come from a local file (or the installed package that
    ships them), never from a hub."""

    architecture: EncoderName = Field(
        "efficientnet-lite0-imagenet",
        description="a preset (docs/usage.md, 'Encoders'): efficientnet-lite0-imagenet (ImageNet "
        "weights installed with hespotex), uni, uni2-h, virchow2, h-optimus-0, phikon-v2, "
        "prov-gigapath, quiltnet-b-32 (the paper's), vit-b-32, vit-tiny-32 (demos and tests), "
        "stain-stats (weights-free); or custom, described under `custom`",
    )
    custom: EncoderSpec | None = Field(
        None, description="with architecture: custom, your own encoder (a timm model, say)"
    )
    weights: str | None = Field(
        None,
        description="a local weights file (.safetensors, or a torch state dict loaded with "
        "weights_only=True) or the folder holding it, or `random` for a randomly initialised "
        "encoder with `seed` (stated in logs and outputs). Required, except for stain-stats "
        "(none) and encoders whose weights an installed package ships (efficientnet-lite0-"
        "imagenet: leave it out)",
    )
    seed: int = Field(0, ge=0, description="seed for `weights: random`")

    @model_validator(mode="after")
    def _spec_and_weights_given(self) -> EncoderConfig:
        if self.architecture == CUSTOM and self.custom is None:
            raise ValueError(
                "encoder.custom: architecture is custom, so describe the encoder here (family, "
                "model, model_kwargs, input_px, mean, std, pooling, feature_dim, ...)"
            )
        if self.architecture != CUSTOM and self.custom is not None:
            raise ValueError(
                f"encoder.custom is given but architecture is {self.architecture}; "
                "set architecture: custom to use it"
            )
        if self.custom is not None and self.custom.name in ENCODER_PRESETS:
            raise ValueError(
                f"encoder.custom.name: {self.custom.name} is a preset's name; choose another"
            )
        spec = self.spec
        missing = self.weights is None or not self.weights.strip()
        if spec.needs_weights and missing and not spec.packaged_weights:
            raise ValueError(
                f"encoder.weights is not set: give the path of {spec.name}'s local weights "
                "file, or `random` to run with a randomly initialised encoder (demo and tests "
                "only)"
            )
        if not spec.needs_weights and self.weights is not None:
            raise ValueError(f"encoder.weights: {spec.name} takes no weights")
        return self

    @property
    def spec(self) -> EncoderSpec:
        return self.custom if self.custom is not None else ENCODER_PRESETS[self.architecture]

    @property
    def is_random(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def uses_packaged_weights(self) -> bool:
        return self.weights is None and self.spec.packaged_weights


class StainNormalisation(StrEnum):
    """tiatoolbox's stain normalisers (``tiatoolbox.tools.stainnorm``)."""

    NONE = "none"
    MACENKO = "macenko"
    VAHADANE = "vahadane"
    REINHARD = "reinhard"


STAIN_TARGET_CHECKPOINT = "checkpoint"


class StainConfig(_Section):
    """Stain normalisation of every patch before the encoder, in training and inference
    alike. The slide's own stain is measured once per slide; each patch is then mapped to
    the target's stain."""

    normalisation: StainNormalisation = Field(
        StainNormalisation.NONE,
        description="none, or a tiatoolbox normaliser: macenko, vahadane (stain vectors and "
        "their intensity), reinhard (LAB colour means and spreads)",
    )
    target: str = Field(
        STAIN_TARGET_CHECKPOINT,
        min_length=1,
        description="checkpoint: the stain statistics stored in decode.checkpoint (when "
        "training: those of the training sections, stored in the new checkpoint); or the path "
        "of a reference H&E image (PNG, JPEG, TIFF) at about features.patch_mpp",
    )
    fit_patches: int = Field(
        64,
        ge=1,
        le=4096,
        description="patches per slide (spread over its spots) the slide's own stain is "
        "measured on",
    )

    @property
    def target_image(self) -> Path | None:
        """The reference image, or None when the target is the checkpoint's."""
        return None if self.target == STAIN_TARGET_CHECKPOINT else Path(self.target)


class FeaturesConfig(_Section):
    """Patch reading and encoding."""

    patch_px: int = Field(224, ge=16, le=4096, description="patch side in pixels")
    patch_mpp: float = Field(0.5, gt=0, le=100, description="µm per pixel of the patch")
    max_upsampling: float = Field(
        2.0,
        ge=1,
        description="refuse slides whose finest level is more than this factor coarser "
        "than patch_mpp (patches would be mostly interpolation)",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="patches per encoder batch")
    num_workers: int = Field(
        2, ge=0, le=64, description="the reading pool's workers (threads or processes)"
    )
    reading: Literal["threads", "processes"] = Field(
        "threads",
        # `readers`, its earlier name, still read: "reader" now means a slide backend only.
        validation_alias=AliasChoices("reading", "readers"),
        description="the reading pool: processes, each filling shared-memory batches (past "
        "the GIL, for a GPU node's many cores); threads, in the features process",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present, else CPU"
    )
    chunk_rows: int = Field(1024, ge=1, description="rows per Zarr chunk of the feature store")
    max_region_px: int = Field(
        2048, ge=64, description="side of the regions read at once, in read-level pixels"
    )
    runtime: Literal["torch", "onnx"] = Field(
        "torch", description="torch, or onnx: ONNX Runtime (CUDA provider when present)"
    )
    onnx_model: Path | None = Field(
        None, description="the encoder exported by `hespotex export-onnx` (runtime: onnx)"
    )

    @model_validator(mode="after")
    def _onnx_model_given(self) -> FeaturesConfig:
        if self.runtime == "onnx" and self.onnx_model is None:
            raise ValueError("features.onnx_model is required with features.runtime: onnx")
        return self

    @property
    def patch_mpp_typed(self) -> Mpp:
        return Mpp(self.patch_mpp)

    @property
    def patch_um(self) -> Microns:
        return Microns(self.patch_px * self.patch_mpp)


class GraphConfig(_Section):
    """The spot graph the decoder runs over."""

    k: int = Field(4, ge=1, le=64, description="nearest neighbours per spot (made undirected)")


class ServedModel(StrEnum):
    HESPOTEX = "hespotex"
    PROBE = "probe"
    ENSEMBLE = "ensemble"
    BEST = "best"


class DecodeConfig(_Section):
    checkpoint: Path | None = Field(None, description="HESpotEx checkpoint from `hespotex train`")
    spot_chunk: int | None = Field(
        None,
        ge=1,
        description="spots per chunk of the LSTM and gene head; unset: as many as keep the "
        "chunk's activations near 256 MB (fewer for a large gene panel)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    serve: ServedModel = Field(
        ServedModel.ENSEMBLE,
        description="what each gene's map is: hespotex (the image stream), probe (the linear "
        "probe the checkpoint carries), ensemble (their mean: the default, which measured "
        "best on held-out sections, benchmarks/RESULTS.md), or best (per gene, whichever of "
        "the three scored best on held-out spots: cv_pearson if the checkpoint has it, else "
        "the validation section's)",
    )


class GeneSelection(StrEnum):
    HVG_UNION = "hvg_union"
    SHARED = "shared"


class NucleusCounter(StrEnum):
    NONE = "none"
    HEMATOXYLIN = "hematoxylin"


class LibrarySize(StrEnum):
    """What CPM divides a spot's counts by."""

    ALL_GENES = "all_genes"  # all of the spot's counts
    SELECTED_GENES = "selected_genes"  # the counts of the predicted genes only (the authors')


TOP_VARIANCE_GENES = 50
# The linear probe's principal components (HEST-Benchmark's 256): what the image stream may read.
PROBE_COMPONENTS = 256
# The genes a breast-cancer user looks at first: immunoglobulins (plasma cells), collagens and
# stroma, epithelium and tumour (HER2 amplicon: ERBB2, GRB7).
BREAST_MARKERS = (
    "IGKC", "IGHG1", "IGLC2", "JCHAIN", "COL1A1", "COL3A1", "FN1", "POSTN", "MGP",
    "EPCAM", "CDH1", "KRT81", "CD24", "ERBB2", "GRB7", "SCGB2A2", "CEACAM6",
)  # fmt: skip

TRAINING_PRESETS: dict[str, dict[str, Any]] = {
    # The authors' code (docs/method.md): no dropout, a fixed 50 image-stream epochs (the epoch
    # is still chosen on the validation section, never on the test one), 500 autoencoder
    # epochs on a kNN graph of 7 neighbours and self, 1,000 seurat_v3 genes per section, CPM
    # over the selected genes.
    "paper": {"dropout": 0.0, "feature_dropout": 0.0, "lr": 1e-3, "weight_decay": 1e-3,
              "epochs": 50, "patience": 50, "gate_epochs": 500, "gate_k": 7, "n_genes": 1000,
              "library_size": "selected_genes", "weight_average": 0.0, "feature_components": 0,
              "linear_path": False},
    # What HER2ST-sized sections need (DESIGN.md §1; benchmarks/RESULTS.md, the variants
    # tried): heavy dropout on the features and heads and weight decay (a few hundred spots per
    # section, 1280-d features), a smaller step, the weights averaged over epochs, early
    # stopping.
    "regularised": {"dropout": 0.7, "feature_dropout": 0.9, "lr": 1e-4, "weight_decay": 0.05,
                    "epochs": 600, "patience": 60, "gate_epochs": 500, "weight_average": 0.9},
}  # fmt: skip


class TrainingConfig(_Section):
    """`hespotex train` and `crossval`: the expression autoencoder, then the image stream
    aligned to it. A ``preset`` fills the keys it names; keys given beside it win."""

    preset: Literal["paper", "regularised"] | None = Field(
        None,
        description="paper: the authors' settings (docs/method.md); regularised (the "
        "defaults): dropout, a smaller learning rate and early stopping (TRAINING_PRESETS in "
        "hespotex/config.py)",
    )
    gene_selection: GeneSelection = Field(
        GeneSelection.HVG_UNION,
        description="hvg_union: union of each training section's top n_genes by seurat_v3 "
        "on raw counts; shared: every gene the sections share",
    )
    n_genes: int = Field(256, ge=1, description="seurat_v3 genes per section (hvg_union)")
    genes_file: Path | None = Field(None, description="a gene per line; overrides the above")
    include_genes: list[str] = Field(
        default_factory=list,
        description="genes predicted whether or not they are chosen (genes of interest: "
        "outputs.genes, say); each must be in every section",
    )
    top_variance_genes: int = Field(
        TOP_VARIANCE_GENES,
        ge=0,
        description="this many genes of highest variance of log1p CPM over the training "
        "sections' spots pooled are predicted too, and scored as a gene set of their own",
    )
    marker_genes: list[str] = Field(
        default_factory=lambda: list(BREAST_MARKERS),
        description="a marker panel predicted too (those every section has) and scored as a "
        "gene set of its own; the default is breast's: immunoglobulins, stroma, epithelium and "
        "tumour",
    )
    min_cells: int = Field(
        1,
        ge=0,
        description="a gene is chosen only if detected in at least this many spots of every "
        "training section (the authors' filter_genes(min_cells=1) per section)",
    )
    library_size: LibrarySize = Field(
        LibrarySize.ALL_GENES,
        description="CPM over all of a spot's counts (all_genes), or over the chosen genes "
        "only (selected_genes, the authors')",
    )
    min_spot_counts: int = Field(
        100, ge=0, description="spots with fewer counts are left out of training and scores"
    )
    latent_dim: int = Field(64, ge=2, description="expression latent size L")
    gate_hidden: int = Field(512, ge=2, description="hidden width of the autoencoder")
    gate_k: int = Field(8, ge=1, description="spatial kNN of the autoencoder's graph")
    gate_epochs: int = Field(500, ge=1, description="autoencoder epochs per section")
    gate_lr: float = Field(1e-3, gt=0)
    gate_weight_decay: float = Field(1e-4, ge=0)
    gradient_clip: float = Field(5.0, gt=0)
    epochs: int = Field(600, ge=1, description="image-stream epochs (one step per section)")
    patience: int = Field(
        60, ge=1, description="stop after this many epochs without a better validation score"
    )
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    dropout: float = Field(0.7, ge=0, lt=1, description="dropout in the latent and gene heads")
    feature_dropout: float = Field(
        0.9, ge=0, lt=1, description="dropout on the encoder features entering the latent head"
    )
    feature_components: int = Field(
        0,
        ge=0,
        le=PROBE_COMPONENTS,
        description="if above 0, the image stream reads this many whitened principal "
        "components of the standardised features (the probe's first, fitted on the training "
        "sections; fewer where the features have fewer) instead of the features",
    )
    linear_path: bool = Field(
        False,
        description="add a linear path from the image stream's input to the genes, started at "
        "the linear probe's solution: the heads and graph decoder learn what it misses",
    )
    weight_average: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="if above 0, the model scored on the validation section and kept is an "
        "exponential moving average of the image stream's weights over epochs, with this "
        "decay (0.9: about the last ten epochs); 0: the weights of one epoch",
    )
    nucleus_counter: NucleusCounter = Field(
        NucleusCounter.NONE,
        description="hematoxylin: multiply each spot's prediction by the authors' factor, its "
        "nucleus count clipped to 1..20 over the section's (slide's) largest, plus 1; counted "
        "on the patch's haematoxylin channel (scikit-image)",
    )
    spots_per_step: int = Field(
        10_000,
        ge=1,
        description="larger sections train in spatial blocks of this many spots (plus their "
        "graph neighbours), gradients summed over the blocks: the same step as on the whole "
        "section, with memory bounded by the block (≈ 2.2 GB peak at 10,000 spots and 250 "
        "genes on CPU; more genes need more, the LSTM's width being the gene count)",
    )
    seed: int = Field(0, ge=0, description="seed of weights, dropout and data order")
    resume_every: int = Field(
        10, ge=1, description="image-stream epochs between resumable training states"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in TRAINING_PRESETS:
            return {**TRAINING_PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _linear_path_reads_the_whole_probe(self) -> TrainingConfig:
        if self.linear_path and 0 < self.feature_components < PROBE_COMPONENTS:
            raise ValueError(
                f"linear_path starts at the probe, which reads {PROBE_COMPONENTS} components: "
                f"set feature_components to 0 or {PROBE_COMPONENTS}, not "
                f"{self.feature_components}"
            )
        return self


class OutputsConfig(_Section):
    expression_step: float = Field(
        2**-10,
        ge=0,
        le=0.1,
        description="predictions are rounded to multiples of this (log1p CPM; the model's "
        "error is far larger) so that expression.h5ad compresses ≈ 1.7×; 0 keeps every bit",
    )
    genes: list[str] = Field(
        default_factory=list,
        description="genes drawn as heatmaps and top-patch montages, and written as QuPath "
        "measurements",
    )
    min_gene_pearson: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="leave out of expression.h5ad (and everything drawn from it) the genes "
        "whose per-gene Pearson in the checkpoint is below this: cv_pearson (held-out "
        "sections of `hespotex crossval`) when the checkpoint has it, else validation_pearson; "
        "genes without a score are left out too. null: keep every gene",
    )
    top_patches: int = Field(
        8,
        ge=0,
        le=64,
        description="patches of highest and of lowest predicted expression shown per gene "
        "(results/{slide}/top_patches/); 0 leaves the montages out",
    )
    spatialdata: bool = Field(
        False, description="also write results/{slide}/spatialdata.zarr (napari, spatialdata)"
    )
    spatialdata_python: Path | None = Field(
        None,
        description="a Python with spatialdata installed, which cannot share hespotex's "
        "environment (`make viewers` builds .venv-viewers/bin/python)",
    )


class JobResources(_Section):
    """What one slide's stage asks the cluster for; a job of two stages adds their run times."""

    cpus: int = Field(1, ge=1, le=512, description="CPUs per job")
    mem_mb: int = Field(4000, ge=100, description="memory per job in MB")
    runtime_min: int = Field(
        10, ge=1, description="minutes per slide (a batch job asks for the sum over its slides)"
    )


class ClusterConfig(_Section):
    """Cluster submission (`--profile workflow/profiles/slurm`); ignored by local runs except
    that rules declare these resources."""

    partition: str | None = Field(None, description="SLURM partition for every job")
    account: str | None = Field(None, description="SLURM account for every job")
    gpus_per_features_job: int = Field(
        1, ge=0, le=16, description="GPUs per features job; 0 on a cluster without GPUs"
    )
    gpus_per_predict_job: int = Field(
        0,
        ge=0,
        le=16,
        description="GPUs per predict job: decoding is light with a few hundred genes, but its "
        "LSTM grows with the square of the gene count (5,457 genes: tens of ms per spot on two "
        "CPU cores, benchmarks/RESULTS.md); set decode.device too",
    )
    light: JobResources = Field(
        JobResources(cpus=1, mem_mb=4000, runtime_min=5),
        description="each tissue, tiles, graph, decode and outputs stage (one slide)",
    )
    features: JobResources = Field(
        JobResources(cpus=8, mem_mb=16000, runtime_min=20),
        description="each features job (one slide)",
    )


class RemoteConfig(_Section):
    """Slides whose sheet path is ``s3://``, ``gs://`` or ``https://``: each is fetched into
    a scratch folder by the job that reads it and removed once the job is done with it."""

    scratch: Path | None = Field(
        None,
        description="node-local folder for fetched slides (default: $TMPDIR, else /tmp); it "
        "holds the slide one job is reading, one at a time",
    )
    anonymous: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="S3 without credentials: yes (public buckets such as IDC's), no (the "
        "usual AWS environment: variables, ~/.aws), auto (no when AWS credentials are set)",
    )
    endpoint_url: str | None = Field(
        None, description="an S3-compatible server instead of AWS (e.g. http://minio:9000)"
    )
    retries: int = Field(3, ge=0, le=10, description="tries again after a transient error")


class SlidesPerJob(_Section):
    """How many slides one workflow job runs, one after another in one process (a SLURM job
    asks for one slide's CPUs and memory and the sum of their run times)."""

    prepare: int = Field(50, ge=1, le=10_000, description="tissue + tiles (light)")
    features: int = Field(
        10,
        ge=1,
        le=10_000,
        description="features (GPU): the encoder loads once per job, so more slides per job "
        "spend less of it on start-up",
    )
    predict: int = Field(50, ge=1, le=10_000, description="graph + decode + outputs (light)")


class PipelineConfig(_Section):
    """Everything a run needs. Relative paths are relative to the working directory."""

    samples: Path = Field(Path("config/samples.tsv"), description="the sample sheet (TSV)")
    results: Path = Field(Path("results"), description="per-slide outputs go to results/{id}/")
    logs: Path = Field(Path("logs"), description="per-rule, per-slide logs")
    tissue: TissueConfig = TissueConfig()
    grid: GridConfig = GridConfig()
    encoder: EncoderConfig
    features: FeaturesConfig = FeaturesConfig()
    stain: StainConfig = StainConfig()
    graph: GraphConfig = GraphConfig()
    decode: DecodeConfig = DecodeConfig()
    training: TrainingConfig = TrainingConfig()
    outputs: OutputsConfig = OutputsConfig()
    cluster: ClusterConfig = ClusterConfig()
    slides_per_job: SlidesPerJob = SlidesPerJob()
    remote: RemoteConfig = RemoteConfig()

    @model_validator(mode="after")
    def _patch_fits_the_encoder(self) -> PipelineConfig:
        spec = self.encoder.spec
        if spec.input_px is not None and self.features.patch_px != spec.input_px:
            raise ValueError(
                f"features.patch_px is {self.features.patch_px} but encoder {spec.name} takes "
                f"{spec.input_px} px patches; set features.patch_px: {spec.input_px} (and "
                "features.patch_mpp for the field of view you want)"
            )
        return self


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a config mapping; errors name each bad key."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def load_config(path: Path) -> PipelineConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    return parse_config(data, str(path))


# A sheet path with one of these schemes is fetched before it is read (``io.remote``).
REMOTE_SCHEMES = ("s3", "gs", "http", "https")


class SampleRow(BaseModel):
    """One row of the sample sheet: the slide, its resolution where the file lacks it, what
    a download of it must match, and the ids a cohort joins on (carried, not used)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slide_id: Annotated[str, Field(pattern=SLIDE_ID_PATTERN)]
    path: Annotated[str, Field(min_length=1)]
    mpp: Annotated[float | None, Field(gt=0, le=MPP_MAX)] = None
    size_bytes: Annotated[int | None, Field(ge=1)] = None
    md5: Annotated[str | None, Field(pattern=r"^[0-9a-f]{32}$")] = None
    patient_id: str | None = None
    sample_barcode: str | None = None
    collection: str | None = None
    source_id: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.path.split("://", 1)[0].lower() in REMOTE_SCHEMES and "://" in self.path

    @property
    def slide_path(self) -> Path:
        """The local file; a remote slide has none until it is fetched."""
        if self.is_remote:
            raise ValueError(f"{self.path} is remote: fetch it first (hespotex.io.remote)")
        return Path(self.path)


SAMPLE_COLUMNS = (
    "slide_id",
    "path",
    "mpp",
    "size_bytes",
    "md5",
    "patient_id",
    "sample_barcode",
    "collection",
    "source_id",
)


# Written whatever the rows hold, so that a sheet's text changes only with its rows.
REQUIRED_SAMPLE_COLUMNS = ("slide_id", "path", "mpp")


def sample_sheet_text(samples: list[SampleRow]) -> str:
    """``samples`` as a sample sheet ``read_sample_sheet`` reads back: slide_id, path, mpp, and
    the other columns any row fills."""
    values = [sample.model_dump() for sample in samples]
    columns = [
        column
        for column in SAMPLE_COLUMNS
        if column in REQUIRED_SAMPLE_COLUMNS or any(row[column] is not None for row in values)
    ]
    rows = ["\t".join("" if row[c] is None else str(row[c]) for c in columns) for row in values]
    return "\n".join(["\t".join(columns), *rows]) + "\n"


def read_sample_sheet(path: Path) -> dict[str, SampleRow]:
    """Read and validate the sample sheet: unique safe ids, a path per row, sane mpp."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path}: the sample sheet does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a readable tab-separated sample sheet: {error}") from None
    # Comment lines start with '#'; a '#' inside a path or URL is part of it.
    numbered = [
        (number, line)
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    try:
        table = pd.read_csv(
            io.StringIO("\n".join(line for _, line in numbered)),
            sep="\t",
            dtype=str,
            keep_default_na=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ConfigError(f"{path}: not a readable tab-separated sample sheet: {error}") from None
    missing = [column for column in ("slide_id", "path") if column not in table.columns]
    if missing:
        raise ConfigError(
            f"{path}: the sample sheet lacks column(s) {', '.join(missing)}; "
            f"expected tab-separated columns {', '.join(SAMPLE_COLUMNS)} (all but the first "
            "two optional)"
        )
    unknown = [column for column in table.columns if column not in SAMPLE_COLUMNS]
    if unknown:
        raise ConfigError(f"{path}: unknown column(s) {', '.join(unknown)}")
    rows: dict[str, SampleRow] = {}
    for (line_number, _), record in zip(numbered[1:], table.to_dict("records"), strict=True):
        values = {key: value.strip() for key, value in record.items() if value.strip()}
        try:
            row = SampleRow.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()
            )
            raise ConfigError(f"{path}, line {line_number}: {problems}") from None
        if row.slide_id in rows:
            raise ConfigError(f"{path}, line {line_number}: duplicate slide_id '{row.slide_id}'")
        if row.slide_id == COHORT_FOLDER:
            raise ConfigError(
                f"{path}, line {line_number}: slide_id '{COHORT_FOLDER}' is taken by the "
                f"cohort tables (results/{COHORT_FOLDER}/); rename the slide"
            )
        rows[row.slide_id] = row
    if not rows:
        raise ConfigError(f"{path}: the sample sheet lists no slides")
    return rows


def samples_for(config: PipelineConfig, slide_ids: list[str]) -> list[SampleRow]:
    """The sheet's rows of ``slide_ids``, in that order; an unknown id is an error."""
    samples = read_sample_sheet(config.samples)
    unknown = [slide_id for slide_id in slide_ids if slide_id not in samples]
    if unknown:
        raise ConfigError(f"{config.samples}: no slide with slide_id {', '.join(unknown)}")
    return [samples[slide_id] for slide_id in slide_ids]
