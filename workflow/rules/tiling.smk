rule tiles:
    input:
        mask=PATHS.tissue_mask,
        record=PATHS.tissue_record,
    output:
        spots=PATHS.spots,
    log:
        f"{LOGS}/tiles/{{slide}}.log",
    conda:
        ENV
    shell:
        "hespotex tiles --config {RUN_CONFIG} {wildcards.slide} > {log} 2>&1"
