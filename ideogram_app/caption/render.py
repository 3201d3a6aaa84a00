"""Layout preview with Pillow only: boxes coloured by element type, labelled with the literal text
or a desc excerpt, the background note underneath, on a blank canvas or over an image (to check
placement on a generated picture). Sizes scale with the image, so 256 px to 2048 px and 6:1
strips stay legible.
"""
from __future__ import annotations

import math
import re

from PIL import Image, ImageDraw, ImageFont

from .bbox import bbox_to_pixels
from .model import Caption, Element

CANVAS = (246, 245, 240)
GRID = (226, 224, 216)
NOTE = (120, 118, 110)
TYPE_COLORS = {"obj": (37, 99, 235), "text": (220, 38, 38)}
FILL_ALPHA = {"canvas": 46, "overlay": 70}
LABEL_TEXT = (255, 255, 255)
_WORD = re.compile(r"\S+")


def label_for(index: int, element: Element) -> str:
    """What a box shows: its number and the literal text (quoted) or the start of its desc."""
    if element.type == "text" and element.text:
        return f"{index} \u201c{' / '.join(element.text.splitlines())}\u201d"
    return f"{index} {element.desc}"


def font_size_for(width: int, height: int) -> int:
    """About 1/45 of the image's geometric mean side: ~23 px at 1024², still >= 11 px on 6:1 strips."""
    return max(11, min(48, round(math.sqrt(width * height) / 45)))


def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans when the system has it (covers accents, dashes, Greek, Cyrillic), else Pillow's
    bundled font, which needs no system fonts but lacks e.g. "é" and "–"."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _visible_chars(max_width: float) -> int:
    """More characters than a line `max_width` pixels wide can show, since every character that
    takes up room advances the pen by at least a pixel at these font sizes (only zero-width ones
    such as combining marks or joiners do not, and a label made mostly of those is cut early). Text
    is cut to this before any measuring, so the cost of a label is bounded by its box, not by the
    length of a description (which may be megabytes)."""
    return max(0, int(max_width)) + 1


def _fit(text: str, font: ImageFont.ImageFont, max_width: float) -> str:
    """`text` when it fits in `max_width` pixels, else its longest prefix that fits with an
    ellipsis after it ("" when not even one character does). Binary search over the prefix length
    (widths grow with the prefix), so a label costs O(log n) measurements of at most
    `_visible_chars` characters instead of one measurement per character dropped."""
    cap = _visible_chars(max_width)
    if len(text) <= cap and font.getlength(text) <= max_width:
        return text
    text = text[:cap]
    fits, fails = 0, len(text) + 1  # invariant: a prefix of `fits` chars fits (0 trivially), `fails` does not
    while fails - fits > 1:
        middle = (fits + fails) // 2
        if font.getlength(text[:middle] + "\u2026") <= max_width:
            fits = middle
        else:
            fails = middle
    return text[:fits] + "\u2026" if fits else ""


def _wrap(text: str, font: ImageFont.ImageFont, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap into at most `max_lines` lines; what does not fit ends the last line with an
    ellipsis. Only the first `max_lines` lines' worth of characters is looked at."""
    lines: list[str] = []
    words, budget = [], max_lines * _visible_chars(max_width)
    for match in _WORD.finditer(text):  # whitespace takes no room once split, so count only words
        words.append(match.group())
        budget -= len(match.group()) + 1
        if budget < 0:
            break
    next_word = 0
    while next_word < len(words) and len(lines) < max_lines:
        line = words[next_word]
        next_word += 1
        while next_word < len(words) and font.getlength(line + " " + words[next_word]) <= max_width:
            line += " " + words[next_word]
            next_word += 1
        lines.append(line)
    if next_word < len(words) and lines:
        lines[-1] = _fit(lines[-1] + " " + " ".join(words[next_word:]), font, max_width)
    return [_fit(line, font, max_width) for line in lines]


def render_layout(caption: Caption, width: int, height: int, image: Image.Image | None = None) -> Image.Image:
    """RGB image of `width`x`height`: the layout on a blank canvas, or over `image` (resized to fit)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise ValueError(f"preview size must be positive whole numbers of pixels, got {width!r}x{height!r}")
    mode = "canvas" if image is None else "overlay"
    if image is None:
        base = Image.new("RGB", (width, height), CANVAS)
    else:
        base = image.convert("RGB").resize((width, height)) if image.size != (width, height) else image.convert("RGB")
    size = font_size_for(width, height)
    font = load_font(size)
    small_size = max(10, round(size * 0.8))
    small = load_font(small_size)
    line_width = max(2, round(min(width, height) / 256))
    pad = max(2, size // 5)

    draw = ImageDraw.Draw(base)
    if mode == "canvas":
        for step in range(1, 10):
            x, y = round(width * step / 10), round(height * step / 10)
            draw.line([(x, 0), (x, height)], fill=GRID, width=1)
            draw.line([(0, y), (width, y)], fill=GRID, width=1)
        note = _wrap("background: " + caption.background, small, width - 2 * pad, max(1, (height // 3) // (size + pad)))
        for row, line in enumerate(note):
            draw.text((pad, height - pad - (len(note) - row) * (small_size + pad)), line, font=small, fill=NOTE)

    fills = Image.new("RGBA", base.size, (0, 0, 0, 0))
    fill_draw = ImageDraw.Draw(fills)
    placed = [(i, e, bbox_to_pixels(e.bbox, width, height)) for i, e in enumerate(caption.elements, 1) if e.bbox]
    for _, element, (x0, y0, x1, y1) in placed:
        fill_draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], fill=TYPE_COLORS[element.type] + (FILL_ALPHA[mode],))
    base = Image.alpha_composite(base.convert("RGBA"), fills).convert("RGB")
    draw = ImageDraw.Draw(base)
    for index, element, (x0, y0, x1, y1) in placed:
        color = TYPE_COLORS[element.type]
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=line_width)
        label = _fit(label_for(index, element), font, max(x1 - x0, size * 4) - 2 * pad)
        label_height = size + 2 * pad
        top = y0 if y1 - y0 >= label_height or y0 < label_height else y0 - label_height
        right = min(width, x0 + font.getlength(label) + 2 * pad)
        left = max(0, right - font.getlength(label) - 2 * pad)
        draw.rectangle([left, top, right, top + label_height], fill=color)
        draw.text((left + pad, top + pad), label, font=font, fill=LABEL_TEXT)

    unplaced = [label_for(i, e) for i, e in enumerate(caption.elements, 1) if not e.bbox]
    if unplaced:
        text = _fit("no bbox (model places): " + "; ".join(unplaced), small, width - 2 * pad)
        draw.rectangle([0, 0, width, small_size + 2 * pad], fill=(40, 40, 40))
        draw.text((pad, pad), text, font=small, fill=LABEL_TEXT)
    return base
