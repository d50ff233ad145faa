# A slide's tissue and tiles stages in one job. Both are light and take seconds, while every
# job costs the DAG of a 10,000-slide sheet as much as the work (benchmarks/RESULTS.md). Each
# stage keeps its own command, log and timing file; a failed tiles stage reruns tissue too.
rule prepare:
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
        tissue_timing=PATHS.stage_timing("tissue"),
        spots=PATHS.spots,
        tiles_timing=PATHS.stage_timing("tiles"),
    params:
        config=RUN_CONFIG,
    log:
        tissue=LOGS.stage("tissue", "{slide}"),
        tiles=LOGS.stage("tiles", "{slide}"),
    group:
        "prepare"
    resources:
        **cluster_resources(SETTINGS.cluster.light, stages=2),
    conda:
        ENV
    shell:
        "hespotex tissue --config {params.config} {wildcards.slide} > {log.tissue} 2>&1"
        " && hespotex tiles --config {params.config} {wildcards.slide} > {log.tiles} 2>&1"
