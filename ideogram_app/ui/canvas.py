"""`LayoutCanvas`: the drawable box editor, a `gr.HTML` subclass with plain JS (no build step, no CDN).

Its value is a view of the caption, produced by Python (`canvas_value`): the element list in
model units (`bbox = [y_min, x_min, y_max, x_max]`, 0-1000), the selected index, the image aspect
and an optional background. Gestures come back as one custom event, `edit`, whose data is an
operation (`{"op": "draw", "rect": [...], "size": [...]}`, ...; canvas.js lists them) that
`editor.apply_canvas_op` applies. The JS applies each gesture to a local copy first (snapping,
multi-selection, align and distribute happen there, in model units) and sends it once, when the
gesture ends; the value that comes back is the truth. Hidden and locked elements and the
multi-selection are view state of the page: they never reach the caption.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr

_HERE = Path(__file__).parent

TEMPLATE = """
<div class="lc-root">
  <div class="lc-toolbar">
    <button type="button" class="lc-type" data-tool="type" data-type="obj" title="Draw object boxes (O)">▭ obj</button>
    <button type="button" class="lc-type" data-tool="type" data-type="text" title="Draw text boxes (T)">T text</button>
    <button type="button" class="lc-type" data-tool="type" data-type="select"
      title="Select: drag on empty space for a marquee (V; Ctrl-drag does it with any tool)">⬚ select</button>
    <span class="lc-sep"></span>
    <button type="button" data-tool="duplicate" title="Duplicate (Ctrl+D)">Duplicate</button>
    <button type="button" data-tool="delete" title="Delete (Del)">Delete</button>
    <button type="button" data-tool="backward" title="Earlier in the element list ([)">Send back</button>
    <button type="button" data-tool="forward" title="Later in the element list (])">Bring forward</button>
    <span class="lc-sep"></span>
    <button type="button" data-tool="undo" title="Undo (Ctrl+Z)">Undo</button>
    <button type="button" data-tool="redo" title="Redo (Ctrl+Y)">Redo</button>
    <span class="lc-sep"></span>
    <span class="lc-group" title="Align the selected boxes (select several first)">
      <button type="button" data-tool="align" data-align="left" title="Align left edges">⇤</button>
      <button type="button" data-tool="align" data-align="hcenter" title="Align horizontal centres">⇹</button>
      <button type="button" data-tool="align" data-align="right" title="Align right edges">⇥</button>
      <button type="button" data-tool="align" data-align="top" title="Align top edges">⤒</button>
      <button type="button" data-tool="align" data-align="vcenter" title="Align vertical centres">⇳</button>
      <button type="button" data-tool="align" data-align="bottom" title="Align bottom edges">⤓</button>
      <button type="button" data-tool="distribute" data-distribute="h"
        title="Distribute horizontally: equal gaps (three or more boxes)">↔ gaps</button>
      <button type="button" data-tool="distribute" data-distribute="v"
        title="Distribute vertically: equal gaps (three or more boxes)">↕ gaps</button>
    </span>
  </div>
  <div class="lc-main">
    <div class="lc-stage-wrap">
      <div class="lc-stage" tabindex="0" role="application" aria-label="Layout canvas: drag to draw element boxes">
        <img class="lc-bg" alt="">
        <div class="lc-boxes"></div>
        <div class="lc-ghost"></div>
        <div class="lc-marquee"></div>
        <div class="lc-guides"></div>
        <div class="lc-readout" aria-live="off"></div>
      </div>
    </div>
    <div class="lc-layers">
      <div class="lc-layers-head">Layers <span class="lc-legend"><span class="lc-key lc-obj"></span> object
        <span class="lc-key lc-text"></span> text</span></div>
      <ol class="lc-layer-list" aria-label="Elements in caption order (later ones are drawn on top)"></ol>
    </div>
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


# The stage's height as a CSS length: a number with one of these units.
_STAGE_HEIGHT = re.compile(r"\d{1,4}(\.\d{1,3})?(vh|svh|dvh|px|rem|em)")


class LayoutCanvas(gr.HTML):
    """Box editor whose value is `{"elements", "selected", "aspect", "background", "opacity"}`.

    `stage_height` (a CSS length such as "68vh" or "480px") is the stage's height for a landscape or
    square aspect; the stage is never wider than its column. A page that shows the canvas next to other
    things (settings, the result) picks it so that everything fits on one screen."""

    def __init__(self, value: dict | None = None, *, stage_height: str = "68vh", **kwargs: Any):
        if not isinstance(stage_height, str) or not _STAGE_HEIGHT.fullmatch(stage_height):
            raise ValueError(f"LayoutCanvas stage_height must be a CSS length such as '68vh' or '480px', "
                             f"got {stage_height!r}")
        super().__init__(
            value=value or {"elements": [], "selected": None, "aspect": 1.0, "background": None, "opacity": 0.5},
            html_template=TEMPLATE,
            css_template=(_HERE / "canvas.css").read_text(encoding="utf-8"),
            js_on_load=(_HERE / "canvas.js").read_text(encoding="utf-8"),
            apply_default_css=False,
            stage_height=stage_height,
            **kwargs,
        )

    def api_info(self) -> dict[str, Any]:
        return VALUE_SCHEMA

    def example_payload(self) -> Any:
        return {"elements": [{"type": "obj", "bbox": [100, 100, 500, 500], "desc": "a red apple"}], "selected": 0, "aspect": 1.0}

    def example_value(self) -> Any:
        return self.example_payload()
