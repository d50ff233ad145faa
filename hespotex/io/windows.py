"""Windows of a pyramid level that may reach past its edges: what lies outside is glass.

Every reader answers a window request the same way, through ``fill_window``: the part inside
the level from the level's own pixels, the rest white, as the background of a glass slide.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BACKGROUND = 255

# (destination view, left, top, right, bottom): copy the level's pixels [top:bottom,
# left:right] into the view, which has exactly that shape.
CopyInside = Callable[[np.ndarray, int, int, int, int], None]


def fill_window(
    out: np.ndarray, x0: int, y0: int, level_size: tuple[int, int], copy_inside: CopyInside
) -> np.ndarray:
    """Fill ``out`` (height, width, 3), the window whose top-left corner is level pixel
    (x0, y0) of a level of ``level_size`` (width, height); returns ``out``."""
    height, width = out.shape[:2]
    level_width, level_height = level_size
    left, top = max(x0, 0), max(y0, 0)
    right, bottom = min(x0 + width, level_width), min(y0 + height, level_height)
    if (left, top, right, bottom) != (x0, y0, x0 + width, y0 + height):
        out.fill(BACKGROUND)
    if right > left and bottom > top:
        copy_inside(out[top - y0 : bottom - y0, left - x0 : right - x0], left, top, right, bottom)
    return out


def read_window(
    x0: int, y0: int, size: tuple[int, int], level_size: tuple[int, int], copy_inside: CopyInside
) -> np.ndarray:
    """A new (height, width, 3) uint8 window of ``size`` (width, height), filled as
    ``fill_window`` does."""
    width, height = size
    out = np.empty((height, width, 3), dtype=np.uint8)
    return fill_window(out, x0, y0, level_size, copy_inside)
