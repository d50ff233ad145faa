"""The pipeline stages, one module each as the sub-commands name them: tissue, tiles,
features, graph, decode (the outputs stage after them is ``hespotex.outputs.per_slide``).

Imports the root modules, ``hespotex.io`` and ``hespotex.model``, and stages before it.
"""
