"""What people open beside the expression maps: heatmaps, top-patch montages, QuPath GeoJSON,
qc.json and stage timings, the cohort tables and the SpatialData export, plus figure saving.

Imports the root modules, ``hespotex.io``, ``hespotex.model`` and ``hespotex.stages`` (their
records); never training or the CLI.
"""
