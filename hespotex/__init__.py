"""HESpotEx: spot-level gene expression from H&E whole-slide images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hespotex")
except PackageNotFoundError:
    __version__ = "0+unknown"
