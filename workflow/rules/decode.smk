# The earlier stages' timings (qc/timings/) go into qc.json when present but are not inputs:
# each is written by a job already upstream through features, graph, spots or the tissue
# files, so as inputs they only added four DAG edges per slide (see benchmarks/RESULTS.md).
rule decode:
    input:
        slide_file,
        features=PATHS.features,
        graph=PATHS.graph,
        spots=PATHS.spots,
        record=PATHS.tissue_record,
        thumbnail=PATHS.thumbnail,
        mask=PATHS.tissue_mask,
        checkpoint=str(SETTINGS.decode.checkpoint),
    output:
        expression=PATHS.expression,
        qupath=PATHS.qupath,
        heatmaps=report(
            directory(PATHS.heatmaps),
            patterns=["{gene}.png"],
            caption="../report/heatmaps.rst",
            category="Heatmaps",
            subcategory="{slide}",
            labels={"slide": "{slide}", "gene": "{gene}"},
        ),
        top_patches=report(
            directory(PATHS.top_patches),
            patterns=["{gene}.png"],
            caption="../report/top_patches.rst",
            category="Top patches",
            subcategory="{slide}",
            labels={"slide": "{slide}", "gene": "{gene}"},
        ),
        qc=PATHS.qc,
        timing=PATHS.stage_timing("decode"),
    params:
        config=RUN_CONFIG,
    log:
        f"{LOGS}/decode/{{slide}}.log",
    group:
        "predict"
    resources:
        **LIGHT_RESOURCES,
    conda:
        ENV
    shell:
        "hespotex decode --config {params.config} {wildcards.slide} > {log} 2>&1"
