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
        expand(PATHS.expression, slide=SLIDES),
        expand(PATHS.tissue_qc, slide=SLIDES),
        COHORT.summary,
        COHORT.pseudobulk,
        expand(PATHS.spatialdata, slide=SLIDES) if SETTINGS.outputs.spatialdata else [],
    default_target: True


include: "workflow/rules/prepare.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/cohort.smk"


onerror:
    # A failed slide keeps the cohort rule from running (its inputs are every slide's), yet the
    # tables should still cover the finished slides and say why the others failed.
    try:
        subprocess.run(["hespotex", "cohort", "--config", RUN_CONFIG], check=False)
    except OSError as error:
        print(f"could not write the cohort tables: {error}", file=sys.stderr)
