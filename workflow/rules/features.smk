rule features:
    input:
        slide_file,
        spots=PATHS.spots,
    output:
        features=directory(PATHS.features),
        timing=PATHS.stage_timing("features"),
    params:
        config=RUN_CONFIG,
    log:
        LOGS.stage("features", "{slide}"),
    threads: max(1, SETTINGS.features.num_workers)
    group:
        "encode"
    resources:
        **FEATURES_RESOURCES,
    conda:
        ENV
    shell:
        "hespotex features --config {params.config} {wildcards.slide} > {log} 2>&1"
