rule tissue:
    input:
        slide_file,
    output:
        mask=PATHS.tissue_mask,
        thumbnail=PATHS.thumbnail,
        qc=report(
            PATHS.tissue_qc,
            caption="../report/tissue_qc.rst",
            category="Tissue QC",
            labels={"slide": "{slide}"},
        ),
        record=PATHS.tissue_record,
        timing=PATHS.stage_timing("tissue"),
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
