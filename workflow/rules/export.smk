# Optional SpatialData Zarr of each finished slide (outputs.spatialdata), a predict shard at a
# time, written by a second interpreter: spatialdata cannot share hespotex's environment (see
# hespotex/outputs/spatialdata_export.py).
rule spatialdata:
    input:
        predicted=RUN.shard_manifest("predict", "{shard}"),
    output:
        manifest=RUN.shard_manifest("spatialdata", "{shard}"),
    params:
        python=SETTINGS.outputs.spatialdata_python,
        exporter=SPATIALDATA_EXPORTER,
        results=lambda wildcards: str(SETTINGS.results),
        failures=lambda wildcards: RUN.shard_failures("spatialdata", wildcards.shard),
        failed_attempts=failed_attempts_of("spatialdata"),
    log:
        LOGS.shard("spatialdata", "{shard}"),
    resources:
        **cluster_resources(SETTINGS.cluster.light, SETTINGS.slides_per_job.predict),
    conda:
        "../../envs/viewers.yaml"
    shell:
        "{params.python} {params.exporter} --results {params.results}"
        " --slides-from {input.predicted} --manifest {output.manifest}"
        " --failures {params.failures} > {log} 2>&1"
