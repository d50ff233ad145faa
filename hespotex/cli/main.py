"""The `hespotex` command line: one sub-command per pipeline stage, plus train and helpers.

Each stage takes the config and slide ids (`hespotex features --config C SLIDE ...`), so any
step can be rerun by hand; `hespotex run --stages ... --shard SHEET` is what the workflow's
jobs call: several stages over a shard of slides in one process. Heavy libraries are imported
inside the commands, so ``hespotex --help`` and a config error answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hespotex.errors import HespotexError
from hespotex.pipeline import LOG_FORMAT
from hespotex.stage_table import STAGE_TABLE, STAGES

logger = logging.getLogger("hespotex")


def _config(args: argparse.Namespace):
    from hespotex.config import load_config

    return load_config(args.config)


def _samples(args: argparse.Namespace, config) -> list:
    from hespotex.config import read_sample_sheet, samples_for

    if args.shard is not None:
        return list(read_sample_sheet(args.shard).values())
    return samples_for(config, list(dict.fromkeys(args.slide_ids)))


def _stages(args: argparse.Namespace) -> list[str]:
    from hespotex.errors import ConfigError

    stages = [args.stage] if args.stage else args.stages
    first = STAGES.index(stages[0])
    if stages != list(STAGES[first : first + len(stages)]):
        raise ConfigError(f"--stages {' '.join(stages)}: give consecutive stages of {STAGES}")
    return stages


def cmd_run(args: argparse.Namespace) -> None:
    """Stages over slides in one process (``hespotex.pipeline.engine``). Slides named on the command
    line: a failed slide makes the command fail once the others are done. A shard (the
    workflow's jobs): each slide's stages log to ``logs/{stage}/{slide}.log``, failures are
    recorded in the manifest and the failure log, and the command succeeds."""
    from hespotex.errors import SlidesFailedError
    from hespotex.pipeline.engine import Outcome, record_failures, run_batch, write_manifest

    config = _config(args)
    shard_mode = args.shard is not None
    results = run_batch(config, _samples(args, config), _stages(args), args.force, shard_mode)
    failed = [result for result in results if result.status is Outcome.FAILED]
    if shard_mode:
        write_manifest(args.manifest, results)
        record_failures(args.failures, results)
        logger.info(
            "%d slide(s): %d done, %d failed, %d waiting for an earlier stage",
            len(results),
            sum(result.status is Outcome.DONE for result in results),
            len(failed),
            sum(result.status is Outcome.WAITING for result in results),
        )
        return
    if failed:
        names = ", ".join(f"{result.slide_id} ({result.stage})" for result in failed)
        raise SlidesFailedError(f"{len(failed)} of {len(results)} slide(s) failed: {names}")


def cmd_cohort(args: argparse.Namespace) -> None:
    from hespotex.outputs.cohort import run_cohort

    run_cohort(_config(args), args.workers)


def cmd_evaluate_bulk(args: argparse.Namespace) -> None:
    from hespotex.evaluation.bulk import run_evaluate_bulk

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
    from hespotex.io.sections import read_sections_sheet
    from hespotex.network.checkpoint import save_checkpoint
    from hespotex.training.fit import train

    config = _config(args)
    resume = args.out.with_name(args.out.name + ".resume.pt")
    checkpoint = train(read_sections_sheet(args.sections), args.validation, config, resume)
    meta = checkpoint.meta
    if args.gene_scores is not None:
        from hespotex.evaluation.crossval import with_cv_scores

        meta = with_cv_scores(meta, args.gene_scores)
    save_checkpoint(args.out, checkpoint._replace(meta=meta))
    logger.info(
        "wrote checkpoint %s: %d genes, trained on %s",
        args.out,
        len(meta.genes),
        ", ".join(meta.trained_on),
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from hespotex.evaluation.evaluate import run_evaluate
    from hespotex.io.sections import read_sections_sheet

    sources = read_sections_sheet(args.sections)
    if args.section:
        sources = [source for source in sources if source.section_id in set(args.section)]
    run_evaluate(args.checkpoint, sources, _config(args), args.out)
    logger.info("wrote %s", args.out)


def cmd_crossval(args: argparse.Namespace) -> None:
    from hespotex.evaluation.crossval import run_crossval
    from hespotex.io.sections import read_sections_sheet

    run_crossval(read_sections_sheet(args.sections), _config(args), args.seeds, args.out)
    logger.info("wrote %s", args.out)


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from hespotex.encoder.build import load_encoder
    from hespotex.encoder.runners import export_onnx

    config = _config(args)
    encoder = load_encoder(config.encoder)
    export_onnx(encoder, args.out, config.features.patch_px)
    logger.info("wrote %s: %s", args.out, encoder.identity.describe())


def cmd_check(args: argparse.Namespace) -> None:
    from hespotex.pipeline.preflight import check_run

    config = _config(args)
    samples = check_run(config)
    logger.info("%s: valid; %d slide(s) in %s", args.config, len(samples), config.samples)


def cmd_demo_data(args: argparse.Namespace) -> None:
    from hespotex.demo.builder import build_demo

    build_demo(args.out, Path(args.shared_data))


def _add_slides(parser: argparse.ArgumentParser, stage: str | None = None) -> None:
    parser.add_argument("slide_ids", nargs="*", metavar="SLIDE_ID", help="slide_ids of the sheet")
    parser.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    parser.add_argument(
        "--force", action="store_true", help="redo stages whose records are up to date"
    )
    parser.set_defaults(handler=cmd_run, shard=None, stage=stage)


def _add_scoring(subparsers, name: str, handler, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("--sections", type=Path, required=True, help="sections sheet (TSV)")
    parser.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    parser.add_argument("--out", type=Path, required=True, help="folder for TSV, JSON, PNG")
    parser.set_defaults(handler=handler)
    return parser


def cmd_sheet(args: argparse.Namespace) -> None:
    from hespotex.io.cohort_sheets import (
        gdc_sheet,
        idc_sheet,
        idc_sizes_mb,
        write_cohort_sheet,
    )

    if args.source == "gdc":
        sheet = gdc_sheet(args.manifest, args.root)
        size = sheet["size_bytes"].sum() / 1e12
        where = args.root or "GDC's data endpoint (fetched as each slide is run)"
        logger.info("%d slides, %.2f TB, from %s", len(sheet), size, where)
    else:
        patients = None
        if args.patients is not None:
            patients = [line.strip() for line in args.patients.read_text().splitlines()]
            patients = [patient for patient in patients if patient]
        sheet = idc_sheet(args.collection, args.kind, patients)
        size = idc_sizes_mb(sheet, args.collection).sum() / 1e6
        logger.info(
            "%d %s H&E slides of %d patients in %s, %.2f TB in IDC's public bucket",
            len(sheet),
            args.kind,
            sheet["patient_id"].nunique(),
            ", ".join(args.collection),
            size,
        )
    write_cohort_sheet(sheet, args.out)
    logger.info("wrote %s", args.out)


def cmd_view(args: argparse.Namespace) -> None:
    from hespotex.viewer.server import serve

    server = serve(_config(args), args.host, args.port, args.assets)
    host, port = server.server_address[:2]
    logger.info("the results are at http://%s:%d/ (Ctrl+C stops the viewer)", host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("viewer stopped")
    finally:
        server.server_close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hespotex", description="Spot-level gene expression from H&E whole-slide images."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for stage in STAGE_TABLE:
        _add_slides(subparsers.add_parser(stage.name, help=stage.help), stage.name)
    run = subparsers.add_parser(
        "run", help="consecutive stages over many slides in one process (the workflow's jobs)"
    )
    _add_slides(run)
    run.add_argument("--stages", nargs="+", required=True, choices=STAGES)
    shard = run.add_argument_group(
        "shard mode (the workflow's jobs): slides from a sheet, failures recorded, not raised"
    )
    shard.add_argument("--shard", type=Path, help="sample sheet of the shard's slides")
    shard.add_argument("--manifest", type=Path, help="where the shard's outcome is written")
    shard.add_argument("--failures", type=Path, help="the shard's failure log (appended)")

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
        "of each model goes into the checkpoint (cv_pearson, probe_cv_pearson, "
        "ensemble_cv_pearson), and decode.serve: best chooses by them",
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
    crossval.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="training seeds, one after another; a fold and seed already scored in --out "
        "(its runs/ folder) with the same settings, data and scoring code is reused, not "
        "trained again",
    )

    export = subparsers.add_parser(
        "export-onnx", help="write the configured encoder as ONNX (features.runtime: onnx)"
    )
    export.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    export.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    export.set_defaults(handler=cmd_export_onnx)

    check = subparsers.add_parser("check", help="validate config, sheet, weights, checkpoint")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(handler=cmd_check)

    sheet = subparsers.add_parser(
        "sheet", help="a sample sheet of TCGA slides from IDC's index or a GDC manifest"
    )
    sources = sheet.add_subparsers(dest="source", required=True)
    idc = sources.add_parser("idc", help="from IDC's index (installed, offline): DICOM in S3")
    idc.add_argument("--collection", nargs="+", required=True, help="e.g. tcga_brca tcga_luad")
    idc.add_argument("--kind", choices=("diagnostic", "frozen", "all"), default="diagnostic")
    idc.add_argument("--patients", type=Path, help="a file of patient ids, one per line")
    gdc = sources.add_parser("gdc", help="from a GDC manifest (and gdc-client's download)")
    gdc.add_argument("--manifest", type=Path, required=True, help="the portal's manifest TSV")
    gdc.add_argument(
        "--root", type=Path, help="where gdc-client put the files (default: fetch from GDC)"
    )
    for parser_of_source in (idc, gdc):
        parser_of_source.add_argument("--out", type=Path, required=True, help="sheet to write")
        parser_of_source.set_defaults(handler=cmd_sheet)

    view = subparsers.add_parser(
        "view", help="look at the results in a browser: the cohort, each slide's maps"
    )
    view.add_argument("--config", type=Path, required=True, help="pipeline config YAML")
    view.add_argument("--host", default="127.0.0.1", help="address to bind (this machine only)")
    view.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    view.add_argument(
        "--assets",
        type=Path,
        help="folder holding OpenSeadragon's node_modules "
        "(default: the checkout's envs/viewer-assets, `make viewer-assets`)",
    )
    view.set_defaults(handler=cmd_view)

    demo = subparsers.add_parser("demo-data", help="build the demo slides and training data")
    demo.add_argument("--out", type=Path, default=Path("demo"))
    demo.add_argument("--shared-data", default="../shared/data", help="real data folder")
    demo.set_defaults(handler=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    logging.captureWarnings(True)
    if args.handler is cmd_run:
        _check_slides_or_shard(parser, args)
    try:
        args.handler(args)
    except HespotexError as error:
        logger.error("%s failed: %s", args.command, error)
        return 1
    return 0


def _check_slides_or_shard(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.shard is None and not args.slide_ids:
        parser.error(f"{args.command}: name at least one SLIDE_ID (or --shard)")
    if args.shard is not None and (args.slide_ids or not (args.manifest and args.failures)):
        parser.error(f"{args.command}: --shard takes --manifest and --failures, no SLIDE_IDs")
