rule tissue:
    input:
        slide_file,
    output:
        mask=PATHS.tissue_mask,
        thumbnail=PATHS.thumbnail,
        qc=PATHS.tissue_qc,
        record=PATHS.tissue_record,
    params:
        config=RUN_CONFIG,
    log:
        f"{LOGS}/tissue/{{slide}}.log",
    group:
        "prepare"
    resources:
        **LIGHT_RESOURCES,
    conda:
        ENV
    shell:
        "hespotex tissue --config {params.config} {wildcards.slide} > {log} 2>&1"
