rule tiles:
    input:
        mask=PATHS.tissue_mask,
        record=PATHS.tissue_record,
    output:
        spots=PATHS.spots,
        timing=PATHS.stage_timing("tiles"),
    params:
        config=RUN_CONFIG,
    log:
        f"{LOGS}/tiles/{{slide}}.log",
    group:
        "prepare"
    resources:
        **LIGHT_RESOURCES,
    conda:
        ENV
    shell:
        "hespotex tiles --config {params.config} {wildcards.slide} > {log} 2>&1"
