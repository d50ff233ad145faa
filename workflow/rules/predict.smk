# A slide's graph, decode and outputs stages in one job, as prepare.smk does for tissue and
# tiles: each takes seconds; the graph is read by decode only, and the outputs stage draws
# the decoded map (heatmaps, top patches, QuPath GeoJSON) and writes qc.json last. A failed
# stage reruns the job's earlier ones too. The earlier stages' timings (qc/timings/) go into
# qc.json but are not inputs: the jobs writing them are upstream already through the features
# and the tissue and tiles files.
rule predict:
    input:
        slide_file,
        features=PATHS.features,
        spots=PATHS.spots,
        record=PATHS.tissue_record,
        thumbnail=PATHS.thumbnail,
        mask=PATHS.tissue_mask,
        checkpoint=str(SETTINGS.decode.checkpoint),
    output:
        graph=directory(PATHS.graph),
        graph_timing=PATHS.stage_timing("graph"),
        expression=PATHS.expression,
        decode_timing=PATHS.stage_timing("decode"),
        qupath=PATHS.qupath,
        heatmaps=report(
            directory(PATHS.heatmaps),
            patterns=["{gene}.png"],
            caption="../report/heatmaps.rst",
            category="Heatmaps",
            subcategory="{slide}",
            labels={"slide": "{slide}", "gene": "{gene}"},
        ),
        top_patches=report(
            directory(PATHS.top_patches),
            patterns=["{gene}.png"],
            caption="../report/top_patches.rst",
            category="Top patches",
            subcategory="{slide}",
            labels={"slide": "{slide}", "gene": "{gene}"},
        ),
        outputs_timing=PATHS.stage_timing("outputs"),
        qc=PATHS.qc,
    params:
        config=RUN_CONFIG,
    log:
        graph=LOGS.stage("graph", "{slide}"),
        decode=LOGS.stage("decode", "{slide}"),
        outputs=LOGS.stage("outputs", "{slide}"),
    group:
        "predict"
    resources:
        **cluster_resources(SETTINGS.cluster.light, stages=3),
    conda:
        ENV
    shell:
        "hespotex graph --config {params.config} {wildcards.slide} > {log.graph} 2>&1"
        " && hespotex decode --config {params.config} {wildcards.slide} > {log.decode} 2>&1"
        " && hespotex outputs --config {params.config} {wildcards.slide} > {log.outputs} 2>&1"
