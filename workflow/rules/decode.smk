rule decode:
    input:
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
        heatmaps=directory(PATHS.heatmaps),
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
