"""What one Snakemake start of the workflow costs, with and without a JSON-schema check of the
config and sample sheet beside the pydantic validation (the check the workflow dropped).

Every SLURM job starts its own Snakemake, which parses the workflow again, so a fixed cost
here is paid once per submitted job. Measured side by side, alternating: `snakemake -n
--quiet` of the real Snakefile, and of a Snakefile that first runs `snakemake.utils.validate`
on the config (schema generated from the pydantic models, defaults filled in, as the workflow
did) and on the sheet (`set_default=False`), then includes the real one. The checkpoint is a
small one built here (only its metadata is read at parse time).

    .venv/bin/python benchmarks/workflow_startup.py --work /tmp/hespotex-startup

prints a Markdown table (also written to <work>/workflow_startup.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml
from timing import run_timed, write_table

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"

WITH_SCHEMA_CHECK = """
import pandas as pd
from snakemake.utils import validate

validate(config, schema="{config_schema}")
validate(
    pd.read_csv(config["samples"], sep="\\t", dtype={{"slide_id": str, "path": str}}, comment="#"),
    schema="{samples_schema}",
    set_default=False,
)


include: "{snakefile}"
"""


def small_checkpoint(path: Path, encoder: dict, genes: list[str]) -> None:
    from hespotex.config import EncoderConfig
    from hespotex.encoder.identity import encoder_identity
    from hespotex.network.checkpoint import Checkpoint, CheckpointMeta, save_checkpoint
    from hespotex.network.probe import LinearProbe
    from hespotex.network.streams import ImageStream

    identity = encoder_identity(EncoderConfig.model_validate(encoder))
    meta = CheckpointMeta(
        genes=genes,
        latent_dim=8,
        dropout=0.0,
        graph_k=4,
        encoder=identity,
        patch_px=224,
        patch_mpp=0.5,
        trained_on=["none"],
        probe_components=8,
    )
    probe = LinearProbe(identity.feature_dim, meta.probe_components, len(genes))
    save_checkpoint(path, Checkpoint(ImageStream(meta.shape), probe, meta))


def schemas(work: Path) -> tuple[Path, Path]:
    from hespotex.config import PipelineConfig, SampleRow

    written = []
    for name, model in (("config", PipelineConfig), ("samples", SampleRow)):
        schema = {
            **model.model_json_schema(),
            "$schema": "https://json-schema.org/draft/2020-12/schema",
        }
        path = work / f"{name}.schema.json"
        path.write_text(json.dumps(schema))
        written.append(path)
    return written[0], written[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hespotex-startup"))
    parser.add_argument("--slides", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    checkpoint = work / "model.safetensors"
    small_checkpoint(checkpoint, demo["encoder"], demo["outputs"]["genes"])
    sheet = work / "samples.tsv"
    rows = [f"slide{index:06d}\t{SLIDE}\t" for index in range(args.slides)]
    sheet.write_text("slide_id\tpath\tmpp\n" + "\n".join(rows) + "\n")
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **demo,
                "samples": str(sheet),
                "results": str(work / "results"),
                "logs": str(work / "logs"),
                "decode": {"checkpoint": str(checkpoint)},
            }
        )
    )
    config_schema, samples_schema = schemas(work)
    checked = work / "Snakefile.schema-checked"
    checked.write_text(
        WITH_SCHEMA_CHECK.format(
            config_schema=config_schema,
            samples_schema=samples_schema,
            snakefile=REPO / "Snakefile",
        )
    )
    snakemake = str(Path(sys.executable).parent / "snakemake")
    variants = {
        "pydantic only (the workflow)": REPO / "Snakefile",
        "pydantic + JSON-schema check": checked,
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, snakefile in variants.items():
            wall, peak, _ = run_timed(
                [snakemake, "-n", "--quiet", "--cores", "1", "--snakefile", str(snakefile),
                 "--directory", str(REPO), "--configfile", str(config)]
            )  # fmt: skip
            seconds[name].append(wall)
            peaks[name].append(peak)
    base = statistics.median(seconds["pydantic only (the workflow)"])
    lines = [
        f"| `snakemake -n --quiet`, {args.slides} slides, median of {args.repeats} | seconds "
        "| × the workflow | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    for name in variants:
        median = statistics.median(seconds[name])
        lines.append(
            f"| {name} | {median:.2f} | {median / base:.2f} | "
            f"{statistics.median(peaks[name]):.0f} |"
        )
    write_table(work / "workflow_startup.md", lines)


if __name__ == "__main__":
    main()
