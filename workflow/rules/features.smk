# The encoder over a shard of slides in one process: CUDA, the imports and the weights load
# once per job, not once per slide. Slides whose tiles are not done wait (their failure is the
# prepare job's record); a slide that fails here is recorded and the others go on.
rule features:
    input:
        sheet=RUN.shard_sheet("features", "{shard}"),
        upstream=upstream_manifests("features"),
    output:
        manifest=RUN.shard_manifest("features", "{shard}"),
    params:
        config=RUN_CONFIG,
        failures=lambda wildcards: RUN.shard_failures("features", wildcards.shard),
        failed_attempts=failed_attempts_of("features"),
    log:
        LOGS.shard("features", "{shard}"),
    threads: max(1, SETTINGS.features.num_workers)
    resources:
        **cluster_resources(
            SETTINGS.cluster.features,
            SETTINGS.slides_per_job.features,
            gpus=SETTINGS.cluster.gpus_per_features_job,
        ),
    conda:
        ENV
    shell:
        shard_command("features")
