# Graph, decode and outputs (heatmaps, top patches, QuPath GeoJSON, then qc.json) over a shard
# of slides in one process. A new checkpoint makes every shard redo decode and outputs.
rule predict:
    input:
        sheet=RUN.shard_sheet("predict", "{shard}"),
        upstream=upstream_manifests("predict"),
        checkpoint=str(SETTINGS.decode.checkpoint),
    output:
        manifest=RUN.shard_manifest("predict", "{shard}"),
    params:
        config=RUN_CONFIG,
        failures=lambda wildcards: RUN.shard_failures("predict", wildcards.shard),
        failed_attempts=failed_attempts_of("predict"),
    log:
        LOGS.shard("predict", "{shard}"),
    resources:
        **cluster_resources(
            SETTINGS.cluster.light,
            SETTINGS.slides_per_job.predict,
            gpus=SETTINGS.cluster.gpus_per_predict_job,
            stages=3,
        ),
    conda:
        ENV
    shell:
        shard_command("predict")
