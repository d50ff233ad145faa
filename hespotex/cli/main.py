"""The `hespotex` command line: one sub-command per pipeline stage, plus train and helpers.

Each stage takes the config and a slide id, exactly as the Snakemake rules call it, so any
step can be rerun by hand. Heavy libraries are imported inside the commands, so
``hespotex --help`` and a config error answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from hespotex.errors import HespotexError

logger = logging.getLogger("hespotex")


def _config(args: argparse.Namespace):
    from hespotex.config import load_config

    return load_config(args.config)


def _open_sample_slide(config, slide_id: str):
    from hespotex.config import sample_for
    from hespotex.io.slide import open_slide

    sample = sample_for(config, slide_id)
    return open_slide(sample.slide_path, slide_id, sample.mpp)


# Each stage's sub-command: the function it runs, whether that reads the slide, its help.
STAGE_COMMANDS = {
    "tissue": ("hespotex.stages.tissue:run_tissue", True, "tissue mask, thumbnail and QC overlay"),
    "tiles": ("hespotex.stages.tiles:run_tiles", False, "spot grid over the tissue"),
    "features": (
        "hespotex.stages.features:run_features",
        True,
        "encode each spot's patch into Zarr",
    ),
    "graph": ("hespotex.stages.graph:run_graph", False, "sparse kNN spot graph"),
    "decode": (
        "hespotex.stages.decode:run_decode",
        False,
        "predict expression → expression.h5ad",
    ),
    "outputs": (
        "hespotex.outputs.per_slide:write_slide_outputs",
        True,
        "heatmaps, top patches, QuPath GeoJSON, then qc.json",
    ),
}


def cmd_stage(args: argparse.Namespace) -> None:
    """Run one stage of one slide inside its timing (``qc/timings/{stage}.json``, written
    once the stage has succeeded), with the slide opened when the stage reads it."""
    from hespotex.outputs.qc import timed_stage
    from hespotex.paths import SlidePaths

    target, reads_slide, _ = STAGE_COMMANDS[args.stage]
    module, function = target.split(":")
    run = getattr(importlib.import_module(module), function)
    config = _config(args)
    with timed_stage(SlidePaths(config.results, args.slide_id), args.stage):
        if not reads_slide:
            run(args.slide_id, config)
            return
        with _open_sample_slide(config, args.slide_id) as slide:
            run(slide, args.slide_id, config)


def cmd_outputs(args: argparse.Namespace) -> None:
    """The last stage, then ``qc.json``, which gathers every stage's timing."""
    from hespotex.outputs.qc import write_slide_qc

    cmd_stage(args)
    write_slide_qc(_config(args), args.slide_id)


def cmd_cohort(args: argparse.Namespace) -> None:
    from hespotex.outputs.cohort import run_cohort

    run_cohort(_config(args), args.workers)


def cmd_evaluate_bulk(args: argparse.Namespace) -> None:
    from hespotex.training.bulk import run_evaluate_bulk

    summary = run_evaluate_bulk(
        args.pseudobulk, args.bulk, args.out, args.map, bulk_is_log=args.bulk_is_log
    )
    logger.info(
        "%d samples × %d genes: per-gene Spearman median %s, per-sample Pearson mean %s; "
        "tables in %s",
        summary["samples"],
        summary["genes"],
        summary["gene_spearman_median"],
        summary["sample_pearson_mean"],
        args.out,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from hespotex.model.checkpoint import save_checkpoint
    from hespotex.training.fit import train
    from hespotex.training.sections import read_sections_sheet

    config = _config(args)
    resume = args.out.with_name(args.out.name + ".resume.pt")
    model, meta = train(read_sections_sheet(args.sections), args.validation, config, resume)
    if args.gene_scores is not None:
        from hespotex.training.crossval import with_cv_scores

        meta = with_cv_scores(meta, args.gene_scores)
    save_checkpoint(args.out, model, meta)
    logger.info(
        "wrote checkpoint %s: %d genes, trained on %s",
        args.out,
        len(meta.genes),
        ", ".join(meta.trained_on),
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from hespotex.training.evaluation import run_evaluate
    from hespotex.training.sections import read_sections_sheet

    sources = read_sections_sheet(args.sections)
    if args.section:
        sources = [source for source in sources if source.section_id in set(args.section)]
    run_evaluate(args.checkpoint, sources, _config(args), args.out, args.top_genes)
    logger.info("wrote %s", args.out)


def cmd_crossval(args: argparse.Namespace) -> None:
    from hespotex.training.crossval import run_crossval
    from hespotex.training.sections import read_sections_sheet

    run_crossval(
        read_sections_sheet(args.sections), _config(args), args.seeds, args.out, args.top_genes
    )
    logger.info("wrote %s", args.out)


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from hespotex.model.encoders import load_encoder
    from hespotex.model.runners import export_onnx

    config = _config(args)
    encoder = load_encoder(config.encoder)
    export_onnx(encoder, args.out, config.features.patch_px)
    logger.info("wrote %s: %s", args.out, encoder.identity.describe())


def cmd_check(args: argparse.Namespace) -> None:
    from hespotex.cli.preflight import check_run

    config = _config(args)
    samples = check_run(config)
    logger.info("%s: valid; %d slide(s) in %s", args.config, len(samples), config.samples)


def cmd_demo_data(args: argparse.Namespace) -> None:
    from hespotex.training.demo import build_demo

    build_demo(args.out, Path(args.shared_data))


def _add_stage(subparsers, name: str, handler, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("slide_id", help="a slide_id of the sample sheet")
    parser.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    parser.set_defaults(handler=handler, stage=name)


def _add_scoring(subparsers, name: str, handler, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("--sections", type=Path, required=True, help="sections sheet (TSV)")
    parser.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    parser.add_argument("--out", type=Path, required=True, help="folder for TSV, JSON, PNG")
    parser.add_argument("--top-genes", type=int, default=50, help="top HVG to average over")
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hespotex", description="Spot-level gene expression from H&E whole-slide images."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for stage, (_, _, help_text) in STAGE_COMMANDS.items():
        handler = cmd_outputs if stage == "outputs" else cmd_stage
        _add_stage(subparsers, stage, handler, help_text)

    cohort = subparsers.add_parser(
        "cohort", help="results/cohort/: summary.tsv of every slide, pseudobulk.tsv"
    )
    cohort.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    cohort.add_argument("--workers", type=int, default=2, help="threads reading slides")
    cohort.set_defaults(handler=cmd_cohort)

    bulk = subparsers.add_parser(
        "evaluate-bulk", help="predicted pseudo-bulk against measured bulk RNA-seq"
    )
    bulk.add_argument("--pseudobulk", type=Path, required=True, help="slides × genes TSV")
    bulk.add_argument("--bulk", type=Path, required=True, help="samples × genes TSV")
    bulk.add_argument("--map", type=Path, help="TSV of slide_id, sample_id (default: same ids)")
    bulk.add_argument(
        "--bulk-is-log", action="store_true", help="bulk values are logged already (no log1p)"
    )
    bulk.add_argument("--out", type=Path, required=True, help="folder for the tables and plot")
    bulk.set_defaults(handler=cmd_evaluate_bulk)

    train = subparsers.add_parser("train", help="train a checkpoint on paired sections")
    train.add_argument("--sections", type=Path, required=True, help="sections sheet (TSV)")
    train.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    train.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    train.add_argument("--validation", help="section_id used to choose the epoch")
    train.add_argument(
        "--gene-scores",
        type=Path,
        help="a `hespotex crossval` output folder (same encoder): each gene's held-out Pearson "
        "goes into the checkpoint as cv_pearson",
    )
    train.set_defaults(handler=cmd_train)

    evaluate = _add_scoring(
        subparsers, "evaluate", cmd_evaluate, "score a checkpoint: Pearson, MSE, SSIM per gene"
    )
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--section", nargs="*", help="only these section_ids of the sheet")

    crossval = _add_scoring(
        subparsers, "crossval", cmd_crossval, "leave-one-section-out, against a ridge probe"
    )
    crossval.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])

    export = subparsers.add_parser(
        "export-onnx", help="write the configured encoder as ONNX (features.runtime: onnx)"
    )
    export.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    export.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    export.set_defaults(handler=cmd_export_onnx)

    check = subparsers.add_parser("check", help="validate config, sheet, weights, checkpoint")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(handler=cmd_check)

    demo = subparsers.add_parser("demo-data", help="build the demo slides and training data")
    demo.add_argument("--out", type=Path, default=Path("demo"))
    demo.add_argument("--shared-data", default="../shared/data", help="real data folder")
    demo.set_defaults(handler=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.captureWarnings(True)
    try:
        args.handler(args)
    except HespotexError as error:
        slide = f" [slide {args.slide_id}]" if getattr(args, "slide_id", None) else ""
        logger.error("%s failed%s: %s", args.command, slide, error)
        return 1
    return 0
