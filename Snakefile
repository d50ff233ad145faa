# HESpotEx: slide sheet -> tissue -> tiles -> features -> graph -> decode -> results/{slide}/
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


localrules:
    all,


rule all:
    input:
        expand(PATHS.expression, slide=SLIDES),
        expand(PATHS.tissue_qc, slide=SLIDES),
    default_target: True


include: "workflow/rules/tissue.smk"
include: "workflow/rules/tiling.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/graph.smk"
include: "workflow/rules/decode.smk"
