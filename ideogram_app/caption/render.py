"""Layout preview with Pillow only: boxes coloured by element type, labelled with the literal text
or a desc excerpt, the background note underneath, on a blank canvas or over an image (to check
placement on a generated picture). Sizes scale with the image, so 256 px to 2048 px and 6:1
strips stay legible.
"""
from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

from .bbox import bbox_to_pixels
from .model import Caption, Element

CANVAS = (246, 245, 240)
GRID = (226, 224, 216)
NOTE = (120, 118, 110)
TYPE_COLORS = {"obj": (37, 99, 235), "text": (220, 38, 38)}
FILL_ALPHA = {"canvas": 46, "overlay": 70}
LABEL_TEXT = (255, 255, 255)


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


def _fit(text: str, font: ImageFont.ImageFont, max_width: float) -> str:
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "\u2026") > max_width:
        text = text[:-1]
    return text + "\u2026" if text else ""


def _wrap(text: str, font: ImageFont.ImageFont, max_width: float, max_lines: int) -> list[str]:
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and font.getlength(line + " " + words[0]) <= max_width:
            line += " " + words.pop(0)
        lines.append(line)
    if words and lines:
        lines[-1] = _fit(lines[-1] + " " + " ".join(words), font, max_width)
    return [_fit(line, font, max_width) for line in lines]


def render_layout(caption: Caption, width: int, height: int, image: Image.Image | None = None) -> Image.Image:
    """RGB image of `width`x`height`: the layout on a blank canvas, or over `image` (resized to fit)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"preview size must be positive, got {width}x{height}")
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
