"""What people open beside the expression maps: heatmaps, top-patch montages, QuPath GeoJSON,
qc.json and stage timings, the cohort tables and gallery, and the SpatialData export.

Imports the root modules, ``hespotex.io``, ``hespotex.model`` and ``hespotex.stages`` (their
records); never training or the CLI.
"""
