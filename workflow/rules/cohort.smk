rule cohort:
    input:
        qc=expand(PATHS.qc, slide=SLIDES),
        expression=expand(PATHS.expression, slide=SLIDES),
    output:
        summary=report(
            COHORT.summary,
            caption="../report/summary.rst",
            category="Cohort",
            labels={"table": "summary"},
        ),
        pseudobulk=COHORT.pseudobulk,
    params:
        config=RUN_CONFIG,
    log:
        LOGS.cohort,
    threads: 2
    resources:
        **LIGHT_RESOURCES,
    conda:
        ENV
    shell:
        "hespotex cohort --config {params.config} --workers {threads} > {log} 2>&1"
