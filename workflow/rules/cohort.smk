# The cohort tables once every predict shard has run, and the slides' images linked into one
# gallery for `snakemake --report`: the QC picture of every slide that reached the tiles stage,
# the finished slides' overlays, heatmaps and top patches.
rule cohort:
    input:
        manifests("predict"),
    output:
        summary=report(
            COHORT.summary,
            caption="../report/summary.rst",
            category="Cohort",
            labels={"table": "summary"},
        ),
        pseudobulk=COHORT.pseudobulk,
        quality=report(
            directory(COHORT.gallery("quality")),
            patterns=["{slide}/quality.png"],
            caption="../report/quality.rst",
            category="Quality control",
            labels={"slide": "{slide}"},
        ),
        tissue_qc=report(
            directory(COHORT.gallery("tissue_qc")),
            patterns=["{slide}/tissue_overlay.png"],
            caption="../report/tissue_qc.rst",
            category="Tissue QC",
            labels={"slide": "{slide}"},
        ),
        heatmaps=report(
            directory(COHORT.gallery("heatmaps")),
            patterns=["{slide}/{gene}.png"],
            caption="../report/heatmaps.rst",
            category="Heatmaps",
            subcategory="{slide}",
            labels={"slide": "{slide}", "gene": "{gene}"},
        ),
        top_patches=report(
            directory(COHORT.gallery("top_patches")),
            patterns=["{slide}/{gene}.png"],
            caption="../report/top_patches.rst",
            category="Top patches",
            subcategory="{slide}",
            labels={"slide": "{slide}", "gene": "{gene}"},
        ),
    params:
        config=RUN_CONFIG,
    log:
        LOGS.cohort,
    threads: 2
    resources:
        **cluster_resources(SETTINGS.cluster.light, 1),
    conda:
        ENV
    shell:
        "hespotex cohort --config {params.config} --workers {threads} > {log} 2>&1"
