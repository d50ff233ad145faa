"""HESpotEx: spot-level gene expression from H&E whole-slide images.

Layers, each importing only those before it: the root modules (``errors``, ``units``,
``encoder_specs``, ``config``, ``paths``), ``io`` (reading slides, writing files), ``model``
(encoders, the network, checkpoints), ``stages`` (tissue, tiles, features, graph, decode),
``outputs`` (what people open), ``training`` (training and judging models), ``cli`` (the
command line).
``tests/test_layers.py`` fails on an import that goes upward.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hespotex")
except PackageNotFoundError:
    __version__ = "0+unknown"
