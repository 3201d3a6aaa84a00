"""THE conversion between pixel rectangles and the model's boxes. The model's bbox is
[y_min, x_min, y_max, x_max] on a 0-1000 grid per axis (y first, relative to height); every UI
annotator speaks (x0, y0, x1, y1) pixels. Everything in the project converts through here.
"""
from __future__ import annotations

import math
from typing import Sequence

from .rules import BBOX_GRID, show


def _round(value: float) -> int:
    """Round half up: Python's round() goes to even, which would make 0.5-steps drift by axis."""
    return math.floor(value + 0.5)


def _clamp(value: float, high: float) -> float:
    return min(max(value, 0.0), high)


def _check_size(width: float, height: float) -> None:
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")


def pixels_to_bbox(rect: Sequence[float], width: int, height: int) -> list[int]:
    """(x0, y0, x1, y1) in pixels, corners in any order (drags may go up/left), may reach past the
    image -> [y_min, x_min, y_max, x_max] integers in 0..1000, clamped and ordered. Raises
    ValueError naming the bad value for anything else (NaN and infinities included: a browser or
    an API client may send them, and they have no place on the grid)."""
    _check_size(width, height)
    if (len(rect) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rect)
            or not all(math.isfinite(v) for v in rect)):
        raise ValueError(f"rect must be four finite pixel coordinates (x0, y0, x1, y1), got {show(list(rect))}")
    x0, y0, x1, y1 = (float(v) for v in rect)
    xs = sorted(_clamp(v, width) for v in (x0, x1))
    ys = sorted(_clamp(v, height) for v in (y0, y1))
    return [_round(ys[0] * BBOX_GRID / height), _round(xs[0] * BBOX_GRID / width),
            _round(ys[1] * BBOX_GRID / height), _round(xs[1] * BBOX_GRID / width)]


def bbox_to_pixels(bbox: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """[y_min, x_min, y_max, x_max] on 0..1000 -> (x0, y0, x1, y1) integer pixels; x1/y1 are
    exclusive edges, so a full-frame box gives (0, 0, width, height)."""
    _check_size(width, height)
    if len(bbox) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in bbox):
        raise ValueError(f"bbox must be four integers [y_min, x_min, y_max, x_max], got {show(list(bbox))}")
    y_min, x_min, y_max, x_max = (min(max(v, 0), BBOX_GRID) for v in bbox)
    return (_round(x_min * width / BBOX_GRID), _round(y_min * height / BBOX_GRID),
            _round(x_max * width / BBOX_GRID), _round(y_max * height / BBOX_GRID))
