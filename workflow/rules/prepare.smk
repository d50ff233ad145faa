# Tissue then tiles for a shard of slides in one process (hespotex run --stages tissue tiles):
# light stages of seconds each, where a job per slide would cost the DAG of a 10,000-slide
# sheet and the cluster more than the work. Each slide's stages log to logs/{stage}/{slide}.log;
# a slide that fails is recorded in the shard's manifest and failure log and the others go on.
rule prepare:
    input:
        sheet=RUN.shard_sheet("prepare", "{shard}"),
        slides=shard_slide_files,
    output:
        manifest=RUN.shard_manifest("prepare", "{shard}"),
    params:
        config=RUN_CONFIG,
        failures=lambda wildcards: RUN.shard_failures("prepare", wildcards.shard),
        failed_attempts=failed_attempts_of("prepare"),
    log:
        LOGS.shard("prepare", "{shard}"),
    resources:
        **cluster_resources(SETTINGS.cluster.light, SETTINGS.slides_per_job.prepare, stages=2),
    conda:
        ENV
    shell:
        shard_command("prepare")
