"""Outside the pipeline: the demo cohort's builder (pyramids and HER2ST sections with planted
genes) and planted artefacts, quality control's ground truth in tests and benchmarks.

Imports any layer below the command line; nothing in the pipeline imports it.
"""
