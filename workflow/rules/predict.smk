# A slide's graph and decode stages in one job, as prepare.smk does for tissue and tiles: the
# graph takes seconds and only decode reads it; a failed decode rebuilds the graph too. The
# earlier stages' timings (qc/timings/) go into qc.json but are not inputs: the jobs writing
# them are upstream already through the features and the tissue and tiles files.
rule predict:
    input:
        slide_file,
        features=PATHS.features,
        spots=PATHS.spots,
        record=PATHS.tissue_record,
        thumbnail=PATHS.thumbnail,
        mask=PATHS.tissue_mask,
        checkpoint=str(SETTINGS.decode.checkpoint),
    output:
        graph=directory(PATHS.graph),
        graph_timing=PATHS.stage_timing("graph"),
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
        decode_timing=PATHS.stage_timing("decode"),
    params:
        config=RUN_CONFIG,
    log:
        graph=f"{LOGS}/graph/{{slide}}.log",
        decode=f"{LOGS}/decode/{{slide}}.log",
    group:
        "predict"
    resources:
        **cluster_resources(SETTINGS.cluster.light, stages=2),
    conda:
        ENV
    shell:
        "hespotex graph --config {params.config} {wildcards.slide} > {log.graph} 2>&1"
        " && hespotex decode --config {params.config} {wildcards.slide} > {log.decode} 2>&1"
