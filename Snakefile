# HESpotEx: slide sheet -> tissue -> tiles -> features -> graph -> decode -> outputs ->
# results/{slide}/, then the cohort tables in results/cohort/; `snakemake --report report.html`
# gathers the QC overlays, heatmaps, top patches and the summary table. Three rules per slide:
# prepare (tissue, tiles), features, predict (graph, decode, outputs).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"


localrules:
    all,


rule all:
    input:
        manifests("predict"),
        COHORT.summary,
        COHORT.pseudobulk,
        (
            manifests("spatialdata", PLAN.shards("predict"))
            if SETTINGS.outputs.spatialdata
            else []
        ),
    default_target: True


include: "workflow/rules/prepare.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/cohort.smk"


onsuccess:
    # Slides fail alone (recorded, not raised), so every job succeeds; the run still ends with
    # an error status when a slide failed, naming them. The next run retries only those.
    failures = failure_report(COHORT.summary)
    if failures:
        print(failures, file=sys.stderr)
        raise SystemExit(1)


onerror:
    # A job that failed as a whole (killed, out of memory) keeps the cohort rule from running,
    # yet the tables should still cover the finished slides and say why the others failed.
    try:
        subprocess.run(["hespotex", "cohort", "--config", RUN_CONFIG], check=False)
    except OSError as error:
        print(f"could not write the cohort tables: {error}", file=sys.stderr)
