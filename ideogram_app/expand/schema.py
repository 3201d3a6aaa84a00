"""The JSON schema sent with `response_format: json_schema` to an OpenAI-compatible server.

It describes the same captions as the local grammar (every part present, a bbox on every element)
in the subset that structured-output servers accept in strict mode: every property required (an
absent palette is `null`), no `oneOf`/`not`/`uniqueItems`, alternatives as `anyOf` of closed
objects. Servers generate keys in
the order of `properties`, so those follow the trained order from `rules.py`. What the subset cannot
say (min < max in a box, non-blank strings) the verifier checks afterwards, as for any answer.
"""
from __future__ import annotations

from ideogram_app.caption.rules import (ART_STYLE_KEYS, BBOX_GRID, ELEMENT_PALETTE_MAX, OBJ_KEYS, PHOTO_STYLE_KEYS,
                                        STYLE_PALETTE_MAX, TEXT_KEYS)

from .bounds import CaptionBounds

SCHEMA_NAME = "ideogram4_caption"


def _closed(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def generation_schema(bounds: CaptionBounds) -> dict:
    text = {"type": "string"}
    color = {"type": "string", "pattern": "^#[0-9A-F]{6}$"}

    def palette(limit: int) -> dict:  # null when absent: strict mode requires every key (the repair drops nulls)
        return {"type": ["array", "null"], "items": color, "maxItems": limit}

    bbox = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": BBOX_GRID}, "minItems": 4,
            "maxItems": 4, "description": "[y_min, x_min, y_max, x_max] on a 0-1000 grid, y first"}
    style_values = {"aesthetics": text, "lighting": text, "photo": text, "medium": text, "art_style": text,
                    "color_palette": palette(STYLE_PALETTE_MAX)}
    element_values = {"bbox": bbox, "text": text, "desc": text, "color_palette": palette(ELEMENT_PALETTE_MAX)}

    def element(kind: str, keys: tuple[str, ...]) -> dict:
        return _closed({key: {"type": "string", "enum": [kind]} if key == "type" else element_values[key]
                        for key in keys})

    return _closed({
        "high_level_description": text,
        "style_description": {"anyOf": [_closed({k: style_values[k] for k in PHOTO_STYLE_KEYS}),
                                        _closed({k: style_values[k] for k in ART_STYLE_KEYS})]},
        "compositional_deconstruction": _closed({
            "background": text,
            "elements": {"type": "array", "items": {"anyOf": [element("obj", OBJ_KEYS), element("text", TEXT_KEYS)]},
                         "minItems": 1, "maxItems": bounds.max_elements},
        }),
    })
