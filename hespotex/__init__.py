"""HESpotEx: spot-level gene expression from H&E whole-slide images.

Layers, each importing only those before it: the root modules (``errors``, ``units``,
``encoder_specs``, ``config``, ``paths``, ``stage_table``, ``metrics``), ``io`` (every on-disk
format and reader), ``encoder`` (the frozen image encoder), ``network`` (HESpotEx's network and
checkpoint), ``stages`` (tissue, tiles, features, graph, decode), ``outputs`` (what people
open), ``viewer`` (the results in a browser), ``pipeline`` (the engine), ``training``
(fitting), ``evaluation`` (judging), ``demo`` (the demo cohort, planted artefacts), ``cli``
(the command line).
``tests/test_layers.py`` fails on an import that goes upward.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hespotex")
except PackageNotFoundError:
    __version__ = "0+unknown"
