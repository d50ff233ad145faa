"""The browser viewer of a run's results (``hespotex view``): a cohort page and, per slide, the
slide zoomable to full resolution with its spots coloured by a gene, QC layers and values.

Imports the root modules, ``hespotex.io`` and ``hespotex.outputs`` (the cohort table).
"""
