"""What people open beside the expression maps: heatmaps, top-patch montages, QuPath GeoJSON,
qc.json, the cohort tables and gallery, and the SpatialData export.

Imports the root modules, ``hespotex.io``, ``hespotex.encoder``, ``hespotex.network`` and
``hespotex.stages``; never the engine, training or the CLI.
"""
