"""The pipeline stages, one module each as the sub-commands name them (tissue, tiles, features,
graph, decode; outputs is ``hespotex.outputs.per_slide``), and what two lean on: stain_check,
artifacts (stain verdict, ink, folds), spot_qc and quality_picture (per-spot QC, its picture).

Imports the root modules, ``hespotex.io``, ``hespotex.encoder``, ``hespotex.network``.
"""
