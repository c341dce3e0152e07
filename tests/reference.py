"""Slow, obviously-correct reference computations shared by several test files (plain Python loops)."""

from __future__ import annotations

import math


def bilinear_sample(image: list[list[float]], y: float, x: float) -> float:
    """Bilinear sample of a 2-D list at (y, x) in pixels, with zeros outside the image."""
    height, width = len(image), len(image[0])
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                total += wy * wx * image[yy][xx]
    return total
