"""Caption edits behind the compose tab: canvas operations, inspector and global fields, JSON paste.

Pure functions `EditorState -> EditorState`; nothing here knows Gradio, so every edit is testable
without a browser. Element and style dicts are rebuilt through the caption core's dataclasses, so
key order is always the canonical one. Canvas rectangles arrive in stage pixels and go through
the caption core's `pixels_to_bbox`, the project's only pixel <-> 0-1000 conversion.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

from ideogram_app.caption import (Caption, CaptionFormatError, CaptionSyntaxError, Element, Issue, PlainText, Style,
                                  parse, pixels_to_bbox, to_json)

from .state import EditorState, clamp_selection, edited, redo, undo

GRID = 1000
DEFAULT_BOX = [250, 250, 750, 750]
DUPLICATE_OFFSET = 20
MEDIUM_CHOICES = ("photograph", "illustration", "3d_render", "painting", "graphic_design")
STYLE_KINDS = ("none", "photo", "art")


class CanvasOpError(ValueError):
    """A canvas event whose payload does not describe a valid operation (the browser is untrusted)."""


@dataclass
class JsonResult:
    """Outcome of a JSON edit; `issues` are the structural problems that kept it from being applied."""

    state: EditorState
    status: str
    issues: list[Issue]
    accepted: bool


# ---- element dict helpers -------------------------------------------------------------------

def element_dict(kind: str, desc: str = "", bbox: list[int] | None = None, text: str | None = None,
                 palette: list[str] | None = None, extra: dict | None = None) -> dict:
    """An element in canonical key order (the caption core decides the order)."""
    return Element(type=kind, desc=desc, bbox=bbox, text=(text or "") if kind == "text" else None,
                   color_palette=palette or None, extra=extra or {}).to_dict()


def _with(element: dict, **changes: Any) -> dict:
    fields = {"kind": element["type"], "desc": element.get("desc", ""), "bbox": element.get("bbox"),
              "text": element.get("text"), "palette": element.get("color_palette"),
              "extra": {k: v for k, v in element.items() if k not in ("type", "bbox", "text", "desc", "color_palette")}}
    fields.update(changes)
    return element_dict(**fields)


# ---- canvas operations ----------------------------------------------------------------------

def _index(state: EditorState, payload: dict) -> int:
    index = payload.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(state.elements):
        raise CanvasOpError(f"canvas event names element {index!r}, but the caption has {len(state.elements)} elements")
    return index


def _rect(payload: dict) -> tuple[list[float], float, float]:
    rect, size = payload.get("rect"), payload.get("size")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (isinstance(rect, list) and len(rect) == 4 and all(number(v) for v in rect)):
        raise CanvasOpError(f"canvas event has rect {rect!r}; expected [x0, y0, x1, y1] in pixels")
    if not (isinstance(size, list) and len(size) == 2 and all(number(v) and v > 0 for v in size)):
        raise CanvasOpError(f"canvas event has size {size!r}; expected [width, height] > 0 in pixels")
    return [float(v) for v in rect], float(size[0]), float(size[1])


def _shift_into_grid(bbox: list[int], dy: int, dx: int) -> list[int]:
    """Move a box by (dy, dx) model units, keeping its size and keeping it inside the grid."""
    y0, x0, y1, x1 = bbox
    dy = min(max(dy, -y0), GRID - y1)
    dx = min(max(dx, -x0), GRID - x1)
    return [y0 + dy, x0 + dx, y1 + dy, x1 + dx]


def _offset(payload: dict, op: str, default: int) -> tuple[int, int]:
    """(dy, dx) of a nudge or duplicate, in model units."""
    dy, dx = payload.get("dy", default), payload.get("dx", default)
    if not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) <= GRID for v in (dy, dx)):
        raise CanvasOpError(f"canvas {op} needs integer dy/dx within ±{GRID}, got {dy!r}/{dx!r}")
    return dy, dx


def _set_boxes(state: EditorState, payload: dict) -> EditorState:
    """Several boxes at once (a group move, align, distribute): one gesture, so one undo step.
    The selection stays; each item is `{"index", "rect"}` with the payload's `size`."""
    items = payload.get("boxes")
    if not isinstance(items, list) or not 0 < len(items) <= len(state.elements):
        count = len(items) if isinstance(items, list) else type(items).__name__
        raise CanvasOpError(f"canvas boxes event needs 1..{len(state.elements)} boxes, got {count}")
    new = edited(state)
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise CanvasOpError(f"canvas boxes item {position} must be an object, got {type(item).__name__}")
        index = _index(state, item)
        rect, width, height = _rect({"rect": item.get("rect"), "size": payload.get("size")})
        bbox = pixels_to_bbox(rect, width, height)
        if bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
            raise CanvasOpError(f"canvas boxes item {position} gives element {index} the empty box {bbox}")
        new.elements[index] = _with(new.elements[index], bbox=bbox)
    return new


def _delete_many(state: EditorState, payload: dict) -> EditorState:
    """Delete a multi-selection: one gesture, so one undo step; nothing stays selected."""
    indices = payload.get("indices")
    if not isinstance(indices, list) or not 0 < len(indices) <= len(state.elements):
        count = len(indices) if isinstance(indices, list) else type(indices).__name__
        raise CanvasOpError(f"canvas delete_many needs 1..{len(state.elements)} indices, got {count}")
    doomed = {_index(state, {"index": index}) for index in indices}
    new = edited(state)
    new.caption["compositional_deconstruction"]["elements"] = [
        element for index, element in enumerate(new.elements) if index not in doomed]
    new.selected = None
    return new


def apply_canvas_op(state: EditorState, payload: dict) -> EditorState:
    """Apply one gesture reported by the canvas (see canvas.js for the payloads)."""
    if not isinstance(payload, dict):
        raise CanvasOpError(f"canvas event data must be an object, got {type(payload).__name__}")
    op = payload.get("op")
    if op == "undo":
        return undo(state)
    if op == "redo":
        return redo(state)
    if op == "select":
        new = copy.deepcopy(state)
        new.selected = None if payload.get("index") is None else _index(state, payload)
        new.last_edit = None
        return new
    if op == "draw":
        kind = payload.get("kind")
        if kind not in ("obj", "text"):
            raise CanvasOpError(f"canvas draw has kind {kind!r}; expected 'obj' or 'text'")
        rect, width, height = _rect(payload)
        bbox = pixels_to_bbox(rect, width, height)
        if bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
            raise CanvasOpError(f"the drawn box {bbox} is empty; drag a larger rectangle")
        new = edited(state)
        new.elements.append(element_dict(kind, bbox=bbox))
        new.selected = len(new.elements) - 1
        return new
    if op == "boxes":
        return _set_boxes(state, payload)
    if op == "delete_many":
        return _delete_many(state, payload)
    index = _index(state, payload)
    new = edited(state)
    element = new.elements[index]
    if op in ("move", "resize"):
        rect, width, height = _rect(payload)
        bbox = pixels_to_bbox(rect, width, height)
        old = element.get("bbox")
        if op == "move" and old:
            bbox = _shift_into_grid(old, bbox[0] - old[0], bbox[1] - old[1])
        if bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
            raise CanvasOpError(f"the resized box {bbox} is empty")
        new.elements[index] = _with(element, bbox=bbox)
    elif op == "nudge":
        dy, dx = _offset(payload, "nudge", 0)
        if element.get("bbox"):
            new.elements[index] = _with(element, bbox=_shift_into_grid(element["bbox"], dy, dx))
    elif op == "delete":
        del new.elements[index]
        index = clamp_selection(index if index < len(new.elements) else index - 1, len(new.elements))
    elif op == "duplicate":
        # The canvas passes an offset that clears the label's height on its stage (labels would overlap).
        dy, dx = _offset(payload, "duplicate", DUPLICATE_OFFSET)
        twin = copy.deepcopy(element)
        if twin.get("bbox"):
            twin["bbox"] = _shift_into_grid(twin["bbox"], dy, dx)
        new.elements.insert(index + 1, twin)
        index += 1
    elif op == "reorder":
        to = payload.get("to")
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < len(new.elements):
            raise CanvasOpError(f"canvas reorder has to={to!r}; expected a position 0..{len(new.elements) - 1}")
        new.elements.insert(to, new.elements.pop(index))
        index = to
    elif op in ("forward", "backward"):
        target = index + 1 if op == "forward" else index - 1
        if 0 <= target < len(new.elements):
            new.elements[index], new.elements[target] = new.elements[target], new.elements[index]
            index = target
    else:
        raise CanvasOpError(f"unknown canvas operation {op!r}")
    new.selected = index
    return new


# ---- inspector (selected element) -----------------------------------------------------------

def normalize_color(value: str) -> str:
    """A colour picker value -> `#RRGGBB` (pickers may report lower case or `rgb()/rgba()`)."""
    value = (value or "").strip()
    match = re.fullmatch(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)", value)
    if match:
        return "#" + "".join(f"{min(255, round(float(c))):02X}" for c in match.groups())
    return value.upper()


def palette_from_pickers(count: int, colors: list[str]) -> list[str]:
    return [normalize_color(c) for c in colors[: max(0, int(count or 0))]]


def set_element_field(state: EditorState, field: str, value: Any) -> EditorState:
    """Change one field of the selected element: `type`, `text`, `desc`, `palette` or `has_box`."""
    element = state.selected_element()
    if element is None:
        return state
    new = edited(state, field_key=f"element{state.selected}.{field}")
    index = new.selected
    if field == "type":
        if value not in ("obj", "text"):
            raise ValueError(f"element type must be 'obj' or 'text', got {value!r}")
        changed = _with(element, kind=value, text=element.get("text", "") if value == "text" else None)
    elif field == "text":
        changed = _with(element, text=value or "")
    elif field == "desc":
        changed = _with(element, desc=value or "")
    elif field == "palette":
        changed = _with(element, palette=list(value) or None)
    elif field == "has_box":
        if bool(value) == bool(element.get("bbox")):
            return state
        changed = _with(element, bbox=list(DEFAULT_BOX) if value else None)
    else:
        raise ValueError(f"unknown element field {field!r}")
    if changed == element:
        return state
    new.elements[index] = changed
    return new


def add_element(state: EditorState, kind: str) -> EditorState:
    new = edited(state)
    new.elements.append(element_dict(kind, bbox=list(DEFAULT_BOX)))
    new.selected = len(new.elements) - 1
    return new


# ---- global fields --------------------------------------------------------------------------

def _caption_object(caption: dict) -> Caption:
    return Caption.from_dict(caption)


def _with_caption(state: EditorState, caption: dict, field_key: str) -> EditorState:
    """`state` with `caption`, as one undo step per field; the same object when nothing changed
    (a field's `blur` after its `input` events repeats the value)."""
    if caption == state.caption:
        return state
    new = edited(state, field_key=field_key)
    new.caption = caption
    return new


def set_high_level_description(state: EditorState, text: str) -> EditorState:
    caption = _caption_object(state.caption)
    caption.high_level_description = text if text else None
    return _with_caption(state, caption.to_dict(), "high_level_description")


def set_background(state: EditorState, text: str) -> EditorState:
    caption = copy.deepcopy(state.caption)
    caption["compositional_deconstruction"]["background"] = text or ""
    return _with_caption(state, caption, "background")


STYLE_FIELDS = ("aesthetics", "lighting", "photo_or_art", "medium", "palette")


def set_style_kind(state: EditorState, kind: str) -> EditorState:
    """Add, switch or remove `style_description`. Switching photo <-> art keeps the filled-in values
    and moves the `photo` text to `art_style` (or back); 'none' removes the block."""
    if kind not in STYLE_KINDS:
        raise ValueError(f"style kind must be one of {', '.join(STYLE_KINDS)}, got {kind!r}")
    caption = _caption_object(state.caption)
    old = caption.style
    if kind == "none":
        caption.style = None
    else:
        special = (old.photo if old.photo is not None else old.art_style) if old else ""
        caption.style = Style(aesthetics=old.aesthetics if old else "", lighting=old.lighting if old else "",
                              medium=old.medium if old else "", photo=special if kind == "photo" else None,
                              art_style=special if kind == "art" else None,
                              color_palette=old.color_palette if old else None, extra=old.extra if old else {})
    return _with_caption(state, caption.to_dict(), "style_kind")


def set_style_field(state: EditorState, field: str, value) -> EditorState:
    """Change one field of the style block (no block: nothing to change). One field per call: each
    form field reports its own edits, so a handler never reads a neighbour field mid-update."""
    if field not in STYLE_FIELDS:
        raise ValueError(f"unknown style field {field!r}; expected one of {', '.join(STYLE_FIELDS)}")
    caption = _caption_object(state.caption)
    style = caption.style
    if style is None:
        return state
    if field == "photo_or_art":
        if style.photo is not None:
            style.photo = value or ""
        else:
            style.art_style = value or ""
    elif field == "palette":
        style.color_palette = list(value) or None
    else:
        setattr(style, field, value or "")
    return _with_caption(state, caption.to_dict(), f"style.{field}")


# ---- JSON editor ----------------------------------------------------------------------------

def ingest_json(state: EditorState, text: str) -> JsonResult:
    """Text typed or pasted into the JSON editor -> new state, or the old state and where it is wrong.
    Text that already matches the state returns the very same state object (nothing to do)."""
    if not (text or "").strip():
        return JsonResult(state, "The JSON editor is empty; the canvas keeps the last valid caption.", [], False)
    try:
        parsed = parse(text)
    except CaptionSyntaxError as err:
        return JsonResult(state, f"Invalid JSON at line {err.line}, column {err.column}: {err.reason}. "
                                 "The canvas keeps the last valid caption.", [], False)
    except CaptionFormatError as err:
        return JsonResult(state, "This JSON is not a caption yet; the canvas keeps the last valid caption.",
                          err.issues, False)
    if isinstance(parsed, PlainText):
        if state.plain_text == parsed.text:
            return JsonResult(state, "", [], True)
        new = copy.deepcopy(state)
        new.plain_text = parsed.text
        return JsonResult(new, "Plain-text prompt: it will be sent as it is (JSON captions give much better "
                               "control). The canvas is not used for plain text.", [], True)
    if parsed.to_dict() == state.caption and state.plain_text is None:
        return JsonResult(state, "", [], True)  # e.g. leaving the editor without a change
    new = edited(state, field_key="json")
    new.caption = parsed.to_dict()
    new.selected = clamp_selection(state.selected, len(new.elements))
    return JsonResult(new, "Caption updated from the JSON editor.", [], True)


def restore(text: str) -> EditorState:
    """A fresh state holding `text`, the caption a browser kept (see `saved_copy`); no undo history.
    Raises ValueError saying why the text cannot be restored."""
    try:
        parsed = parse(text)
    except CaptionSyntaxError as err:
        raise ValueError(f"it is not valid JSON (line {err.line}, column {err.column}: {err.reason})") from None
    except CaptionFormatError as err:
        raise ValueError("it is not a caption: " + "; ".join(str(i) for i in err.issues)) from None
    if isinstance(parsed, PlainText):
        return EditorState(plain_text=parsed.text)
    caption = parsed.to_dict()
    return EditorState(caption=caption, selected=0 if caption["compositional_deconstruction"]["elements"] else None)


def saved_copy(state: EditorState) -> dict:
    """What the browser keeps of a state: the caption as shown in the JSON editor and the size."""
    return {"caption": prompt_text(state), "width": state.width, "height": state.height}


def load_caption(state: EditorState, caption: Caption) -> EditorState:
    """Replace the whole caption (template, imported file, re-opened result); undoable."""
    new = edited(state)
    new.caption = caption.to_dict()
    new.selected = 0 if new.elements else None
    return new


def prompt_text(state: EditorState) -> str:
    """The string Generate sends: plain text as typed, otherwise the canonical caption JSON."""
    return state.plain_text if state.plain_text is not None else to_json(state.caption)
