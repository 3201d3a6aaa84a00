"""Image size rules (docs/pipeline.md, "Sizes"): multiples of 16, 256-2048 per side recommended, aspect up to 6:1."""
from __future__ import annotations

import math

MULTIPLE = 16  # 8x VAE downsampling times the DiT's 2x2 patch
RECOMMENDED_MIN = 256
RECOMMENDED_MAX = 2048
MAX_ASPECT = 6.0


def token_grid(width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of image tokens for a valid size: one token per MULTIPLE x MULTIPLE pixels."""
    return height // MULTIPLE, width // MULTIPLE


class SizeError(ValueError):
    """A size the model cannot produce at all (not a multiple of 16, not positive)."""


def nearest_valid(value: int) -> tuple[int, ...]:
    """The one or two multiples of 16 closest to `value` (below and above)."""
    below = (value // MULTIPLE) * MULTIPLE
    above = below + MULTIPLE
    return (above,) if below < MULTIPLE else (below, above)


def check_size(width: int, height: int) -> list[str]:
    """Raise SizeError for sides the model cannot produce; return warnings for unusual ones.

    Whole numbers and the allowed range are checked first by `GenerationSettings` and `Limits`;
    this is the geometric rule (VAE 8x times patch 2x) and the model's comfort zone.
    """
    problems = []
    for name, value in (("width", width), ("height", height)):
        if value % MULTIPLE:
            options = " and ".join(str(v) for v in nearest_valid(value))
            problems.append(
                f"{name} {value} is not a multiple of {MULTIPLE}; the nearest valid {name}s are {options}"
            )
    if problems:
        raise SizeError("; ".join(problems))
    warnings = []
    for name, value in (("width", width), ("height", height)):
        if not RECOMMENDED_MIN <= value <= RECOMMENDED_MAX:
            warnings.append(
                f"{name} {value} is outside the recommended {RECOMMENDED_MIN}-{RECOMMENDED_MAX} pixels; "
                "expect weaker images"
            )
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        warnings.append(f"aspect ratio {aspect:.2f}:1 is beyond the recommended {MAX_ASPECT:g}:1")
    return warnings


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' (as typed on a command line) -> (width, height); validation is check_size's job."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SizeError(f"size {text!r} is not of the form WIDTHxHEIGHT, e.g. 1024x768")
    return int(parts[0]), int(parts[1])


def size_for_aspect(aspect_w: int, aspect_h: int, megapixels: float = 1.0) -> tuple[int, int]:
    """A valid (width, height) close to the aspect ratio with about `megapixels` x 1024² pixels."""
    area = megapixels * 1024 * 1024
    width = math.sqrt(area * aspect_w / aspect_h)
    height = area / width
    return (max(MULTIPLE, round(width / MULTIPLE) * MULTIPLE), max(MULTIPLE, round(height / MULTIPLE) * MULTIPLE))


_ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (21, 9), (9, 21), (3, 1), (1, 3))

# Label -> (width, height): each common aspect ratio at ~1 MP (1024² class) and ~2 MP (the
# resolution the model was trained at), kept only where it needs no warning (sides 256-2048).
ASPECT_PRESETS: dict[str, tuple[int, int]] = {
    f"{w}:{h} · {mp} MP": size_for_aspect(w, h, mp)
    for mp in (1, 2)
    for w, h in _ASPECTS
    if not check_size(*size_for_aspect(w, h, mp))
}
