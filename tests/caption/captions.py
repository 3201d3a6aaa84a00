"""Small hand-written captions shared by the caption tests."""
import copy

VALID = {
    "high_level_description": "A flat poster with a red circle and a greeting.",
    "style_description": {
        "aesthetics": "bold, minimal",
        "lighting": "flat",
        "medium": "graphic_design",
        "art_style": "flat vector",
        "color_palette": ["#112233"],
    },
    "compositional_deconstruction": {
        "background": "Plain white.",
        "elements": [
            {"type": "obj", "bbox": [100, 100, 500, 500], "desc": "A red circle.", "color_palette": ["#FF0000"]},
            {"type": "text", "bbox": [600, 100, 700, 900], "text": "HELLO", "desc": "Black bold sans-serif."},
        ],
    },
}

PHOTO_STYLE = {"aesthetics": "calm", "lighting": "soft daylight", "photo": "35mm, f/2", "medium": "photograph"}


def valid() -> dict:
    """A fresh deep copy, so tests can mutate it."""
    return copy.deepcopy(VALID)
