# Optional SpatialData Zarr per slide (outputs.spatialdata), written by a second interpreter:
# spatialdata cannot share hespotex's environment (see hespotex/outputs/spatialdata_export.py).
rule spatialdata:
    input:
        expression=PATHS.expression,
    output:
        zarr=directory(PATHS.spatialdata),
    params:
        python=SETTINGS.outputs.spatialdata_python,
        exporter=SPATIALDATA_EXPORTER,
    log:
        LOGS.stage("spatialdata", "{slide}"),
    group:
        "predict"
    resources:
        **LIGHT_RESOURCES,
    conda:
        "../../envs/viewers.yaml"
    shell:
        "{params.python} {params.exporter} {input.expression} {output.zarr} {wildcards.slide}"
        " > {log} 2>&1"
