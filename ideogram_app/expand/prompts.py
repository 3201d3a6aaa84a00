"""The messages sent to the language model. The system message restates the caption format
(docs/caption.md, "The format") for a model that has never seen it; the user message carries the
idea, the image size, the texts that must appear verbatim and the elements to keep."""
from __future__ import annotations

import json
import math

from ideogram_app.caption import Issue

SYSTEM = """You write structured captions for the Ideogram 4 text-to-image model. Answer with one JSON object and nothing else: no prose, no code fence.

The object has exactly these keys, in this order:
- "high_level_description": one sentence that names the medium and the main subject.
- "style_description": an object. For a photograph its keys are, in order, "aesthetics", "lighting", "photo" (camera, lens, film), "medium", "color_palette". For anything else they are "aesthetics", "lighting", "medium", "art_style", "color_palette". Never both "photo" and "art_style". "medium" is a short word such as photograph, illustration, 3d_render, painting or graphic_design. "color_palette" lists up to 16 colours.
- "compositional_deconstruction": an object with "background" (what fills the image behind the elements) and then "elements", a list of elements, the main subject first.

An element is either {"type":"obj","bbox":[...],"desc":"...","color_palette":[...]} for a thing, or {"type":"text","bbox":[...],"text":"...","desc":"...","color_palette":[...]} for lettering to draw, keys in that order. "text" is the exact string to render (a line break is \\n); "desc" says what it looks like (for text: typeface, weight, colour, size, placement). Use one text element per separate piece of lettering. An element palette has at most 5 colours.

Colours are "#RRGGBB" with upper-case hex digits. Write accented letters and symbols as themselves (é, ©), never as \\u escapes. Describe concretely; no empty strings.

"bbox" is [y_min, x_min, y_max, x_max]: four whole numbers from 0 to 1000, y first. y is measured down from the top edge as a fraction of the image height, x from the left edge as a fraction of the width, both times 1000; y_min < y_max and x_min < x_max. The grid is stretched to the image: on a wide image a box that looks square is taller in grid units than it is wide.

Example for a 1024x1024 image:
{"high_level_description":"A flat graphic poster of a lighthouse at dusk with a bold title above it.","style_description":{"aesthetics":"calm, minimal, strong silhouettes","lighting":"soft dusk glow from the horizon","medium":"graphic_design","art_style":"flat vector shapes with a fine paper grain","color_palette":["#1B2A41","#F4A259","#F2E8CF"]},"compositional_deconstruction":{"background":"A gradient sky from deep navy at the top to warm orange at the horizon over a dark sea.","elements":[{"type":"obj","bbox":[300,400,880,600],"desc":"A tall white lighthouse with a red band, its lamp casting a pale beam to the left.","color_palette":["#F2E8CF","#C0392B"]},{"type":"text","bbox":[60,120,220,880],"text":"NORTH LIGHT","desc":"Large bold condensed sans-serif title in cream, centred."}]}}"""


def describe_size(width: int, height: int) -> str:
    divisor = math.gcd(width, height)
    shape = "square" if width == height else "landscape" if width > height else "portrait"
    return f"{width}x{height} pixels ({shape}, aspect ratio {width // divisor}:{height // divisor})"


def expand_messages(idea: str, width: int, height: int, quotes: list[str], kept: list[dict],
                    current: dict | None) -> list[dict]:
    lines = [f"Image size: {describe_size(width, height)}. Fit the boxes to this shape.", "", f"Idea: {idea}"]
    if quotes:
        lines += ["", "Each of these texts must be the \"text\" of its own text element, copied exactly:"]
        lines += [json.dumps(quote, ensure_ascii=False) for quote in quotes]
    if kept:
        lines += ["", "The user placed these elements. Include each one unchanged (same type, bbox, text, desc and "
                  "palette) and compose the rest around them:",
                  json.dumps(kept, ensure_ascii=False, separators=(",", ":"))]
    if current:
        lines += ["", "The user's current caption, to improve on:",
                  json.dumps(current, ensure_ascii=False, separators=(",", ":"))]
    lines += ["", "Answer with the caption JSON only."]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def describe_messages(image_url: str, width: int, height: int) -> list[dict]:
    text = (f"Write the caption of this image ({describe_size(width, height)}): its medium and style, the "
            "background, and every distinct object and every piece of legible lettering as elements with boxes "
            "where they are in the image. Copy lettering exactly as it is written. Answer with the caption JSON only.")
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image_url}}]}]


def retry_messages(messages: list[dict], answer: str, errors: list[Issue]) -> list[dict]:
    """The conversation once more, with the model's answer and the verifier's messages about it."""
    found = "\n".join(f"- {issue}" for issue in errors)
    ask = (f"The caption verifier found these errors in your answer:\n{found}\n\n"
           "Answer again with the whole corrected caption JSON only.")
    return messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": ask}]
