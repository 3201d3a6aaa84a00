"""`LayoutCanvas`: the drawable box editor, a `gr.HTML` subclass with plain JS (no build step, no CDN).

Its value is a view of the caption, produced by Python (`canvas_value`): the element list in
model units (`bbox = [y_min, x_min, y_max, x_max]`, 0-1000), the selected index, the image aspect
and an optional background. Gestures come back as one custom event, `edit`, whose data is an
operation (`{"op": "draw", "rect": [...], "size": [...]}`, ...) that `editor.apply_canvas_op`
applies; the JS never decides what the caption is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

_HERE = Path(__file__).parent

TEMPLATE = """
<div class="lc-root">
  <div class="lc-toolbar">
    <button type="button" class="lc-type" data-tool="type" data-type="obj" title="Draw object boxes (O)">▭ obj</button>
    <button type="button" class="lc-type" data-tool="type" data-type="text" title="Draw text boxes (T)">T text</button>
    <span class="lc-sep"></span>
    <button type="button" data-tool="duplicate" title="Duplicate (Ctrl+D)">Duplicate</button>
    <button type="button" data-tool="delete" title="Delete (Del)">Delete</button>
    <button type="button" data-tool="backward" title="Earlier in the element list ([)">Send back</button>
    <button type="button" data-tool="forward" title="Later in the element list (])">Bring forward</button>
    <span class="lc-sep"></span>
    <button type="button" data-tool="undo" title="Undo (Ctrl+Z)">Undo</button>
    <button type="button" data-tool="redo" title="Redo (Ctrl+Y)">Redo</button>
  </div>
  <div class="lc-stage" tabindex="0" role="application" aria-label="Layout canvas: drag to draw element boxes">
    <img class="lc-bg" alt="">
    <div class="lc-boxes"></div>
    <div class="lc-ghost"></div>
  </div>
  <div class="lc-unplaced"></div>
  <div class="lc-hint"></div>
</div>
"""

VALUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "elements": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "type": {"enum": ["obj", "text"]},
                    "bbox": {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "integer"}}]},
                    "text": {"type": "string"},
                    "desc": {"type": "string"},
                },
            },
        },
        "selected": {"oneOf": [{"type": "null"}, {"type": "integer"}]},
        "aspect": {"type": "number"},
        "background": {"oneOf": [{"type": "null"}, {"type": "string"}]},
        "opacity": {"type": "number"},
    },
}


class LayoutCanvas(gr.HTML):
    """Box editor whose value is `{"elements", "selected", "aspect", "background", "opacity"}`."""

    def __init__(self, value: dict | None = None, **kwargs: Any):
        super().__init__(
            value=value or {"elements": [], "selected": None, "aspect": 1.0, "background": None, "opacity": 0.5},
            html_template=TEMPLATE,
            css_template=(_HERE / "canvas.css").read_text(encoding="utf-8"),
            js_on_load=(_HERE / "canvas.js").read_text(encoding="utf-8"),
            apply_default_css=False,
            **kwargs,
        )

    def api_info(self) -> dict[str, Any]:
        return VALUE_SCHEMA

    def example_payload(self) -> Any:
        return {"elements": [{"type": "obj", "bbox": [100, 100, 500, 500], "desc": "a red apple"}], "selected": 0, "aspect": 1.0}

    def example_value(self) -> Any:
        return self.example_payload()
