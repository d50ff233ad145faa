rule graph:
    input:
        features=PATHS.features,
    output:
        graph=directory(PATHS.graph),
    log:
        f"{LOGS}/graph/{{slide}}.log",
    conda:
        ENV
    shell:
        "hespotex graph --config {RUN_CONFIG} {wildcards.slide} > {log} 2>&1"
