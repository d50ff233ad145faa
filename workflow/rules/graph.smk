rule graph:
    input:
        features=PATHS.features,
    output:
        graph=directory(PATHS.graph),
        timing=PATHS.stage_timing("graph"),
    params:
        config=RUN_CONFIG,
    log:
        f"{LOGS}/graph/{{slide}}.log",
    group:
        "predict"
    resources:
        **LIGHT_RESOURCES,
    conda:
        ENV
    shell:
        "hespotex graph --config {params.config} {wildcards.slide} > {log} 2>&1"
