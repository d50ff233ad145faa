"""Units the pipeline's numbers are in, spelled as types so a signature says which it takes.

Coordinates are level-0 pixels of the slide (``SlidePixels``) or microns (``Microns``);
``Mpp`` is a resolution in microns per pixel.
"""

from typing import NewType

Microns = NewType("Microns", float)
SlidePixels = NewType("SlidePixels", float)
Mpp = NewType("Mpp", float)

MPP_MIN_EXCLUSIVE = 0.0
MPP_MAX = 100.0


def is_plausible_mpp(value: float) -> bool:
    """Scanners resolve 0.1 to a few µm/px; anything outside (0, 100] is a unit mistake."""
    return MPP_MIN_EXCLUSIVE < value <= MPP_MAX
