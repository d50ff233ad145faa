rule decode:
    input:
        features=PATHS.features,
        graph=PATHS.graph,
        spots=PATHS.spots,
        record=PATHS.tissue_record,
        thumbnail=PATHS.thumbnail,
        checkpoint=str(SETTINGS.decode.checkpoint),
    output:
        expression=PATHS.expression,
        heatmaps=directory(PATHS.heatmaps),
    log:
        f"{LOGS}/decode/{{slide}}.log",
    conda:
        ENV
    shell:
        "hespotex decode --config {RUN_CONFIG} {wildcards.slide} > {log} 2>&1"
