rule features:
    input:
        slide_file,
        spots=PATHS.spots,
    output:
        features=directory(PATHS.features),
    log:
        f"{LOGS}/features/{{slide}}.log",
    threads: max(1, SETTINGS.features.num_workers)
    conda:
        ENV
    shell:
        "hespotex features --config {RUN_CONFIG} {wildcards.slide} > {log} 2>&1"
