"""From a model's answer to a checked caption: find the JSON, repair what is mechanical, put back the
user's quoted texts and kept elements, then `parse` -> `to_json` -> `verify`.

Mechanical means one obvious fix that needs no judgement about content: sort a box's corners, clamp
it to the grid, scale 0-1 fractions, spell a colour in full, drop an identical copy of an element.
Everything else (unknown keys, missing fields, empty descriptions, both photo and art_style) is an
error that goes back to the model with the verifier's message. Every repair is reported.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ideogram_app.caption import (Caption, CaptionFormatError, CaptionSyntaxError, Issue, PlainText, parse, to_json,
                                  verify)
from ideogram_app.caption.parse import decode_text
from ideogram_app.caption.rules import BBOX_GRID, ELEMENT_PALETTE_MAX, STYLE_PALETTE_MAX, show

from .result import Repair

# Warnings `to_json` fixes by itself; on a model's answer they are reported as repairs.
CANONICAL_FIXES = frozenset({"key_order", "color_case", "unicode_escape", "not_compact", "double_encoded"})
ELEMENTS = "compositional_deconstruction.elements"

_THINKING = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
# A straight-quoted string opens after a start, space or opening bracket and closes before an end,
# space or punctuation, so inch marks (a 12" pizza) and apostrophes are not quotes.
_STRAIGHT = re.compile(r'(?:^|(?<=[\s(\[{:,;]))"([^"]+)"(?=$|[\s)\]},.;:!?])')
_CURLY = re.compile(r"“([^“”]+)”")
_SHORT_HEX = re.compile(r"#([0-9A-Fa-f])([0-9A-Fa-f])([0-9A-Fa-f])")
_BARE_HEX = re.compile(r"[0-9A-Fa-f]{6}")


def quoted_texts(prompt: str) -> list[str]:
    """The strings quoted in `prompt` with "…" or “…”, in order of appearance, each once, exactly as
    written (spaces included; blank ones skipped)."""
    found = sorted([(m.start(), m.group(1)) for m in _STRAIGHT.finditer(prompt)]
                   + [(m.start(), m.group(1)) for m in _CURLY.finditer(prompt)])
    texts: list[str] = []
    for _, text in found:
        if text.strip() and text not in texts:
            texts.append(text)
    return texts


@dataclass
class Finished:
    """The outcome of one answer: a caption with its canonical JSON, or the errors to send back."""

    caption: Caption | None
    json: str | None
    repairs: list[Repair] = field(default_factory=list)
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


def finish(raw: str, quotes: list[str], kept: list[dict]) -> Finished:
    """Check and repair one answer; `quotes` must appear as text elements, `kept` unchanged."""
    repairs: list[Repair] = []
    text = _THINKING.sub("", raw).strip()
    if not text:
        return Finished(None, None, errors=[_error("the answer is empty; write the caption JSON")])
    text = _json_part(text, repairs)
    if text is None:
        return Finished(None, None, errors=[_error(f"the answer is prose, not a JSON caption: {show(raw.strip())}; "
                                                   "answer with the JSON object only")])
    try:
        decoded = decode_text(text)
    except CaptionSyntaxError:
        return Finished(None, None, errors=[i for i in verify(text) if i.severity == "error"])
    if decoded.duplicate_keys:
        return Finished(None, None, repairs, errors=decoded.duplicate_keys)
    repairs += [Repair(i.code, i.path, i.message) for i in verify(text) if i.code in CANONICAL_FIXES]
    value = _repair(copy.deepcopy(decoded.value), repairs)
    elements = _elements(value)
    if elements is not None:
        _restore_kept(elements, kept, repairs)
        _restore_quotes(elements, quotes, kept, repairs)
    errors = [i for i in verify(value) if i.severity == "error"]
    if errors:
        return Finished(None, None, repairs, errors)
    try:
        caption = parse(value)
        canonical = to_json(caption)
    except (CaptionFormatError, ValueError) as err:  # verify found no error, so this is a bug in the core
        return Finished(None, None, repairs, [_error(f"the caption core refused a verified caption: {err}")])
    issues = verify(canonical)
    return Finished(caption, canonical, repairs, [i for i in issues if i.severity == "error"],
                    [i for i in issues if i.severity == "warning"])


def _error(message: str) -> Issue:
    return Issue("not_an_object", "", message, "error")


def _json_part(text: str, repairs: list[Repair]) -> str | None:
    """`text` when it reads as JSON (fenced or double-encoded included; broken JSON too, so the
    verifier's line and column go back to the model), else the span from its first `{` to its last
    `}` (a model that wrapped the JSON in prose), else None."""
    try:
        if not isinstance(decode_text(text), PlainText):
            return text
    except CaptionSyntaxError:
        return text
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    repairs.append(Repair("extracted", "", "the answer had text around the JSON object; only the object was kept"))
    return text[start:end + 1]


def _elements(value: Any) -> list | None:
    if not isinstance(value, dict):
        return None
    comp = value.get("compositional_deconstruction")
    elements = comp.get("elements") if isinstance(comp, dict) else None
    return elements if isinstance(elements, list) else None


def _repair(value: Any, repairs: list[Repair]) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) == 1:  # {"caption": {...}}: a wrapper around the caption
        (key, inner), = value.items()
        if isinstance(inner, dict) and "compositional_deconstruction" in inner:
            repairs.append(Repair("unwrapped", "", f"the caption was wrapped in a {show(key)} key; the wrapper was "
                                  "removed"))
            value = inner
    for key in ("high_level_description", "style_description"):
        if key in value and value[key] is None:
            del value[key]
            repairs.append(Repair("null_removed", key, "was null; the optional field was removed"))
    style = value.get("style_description")
    if isinstance(style, dict):
        _repair_palette(style, "style_description", STYLE_PALETTE_MAX, repairs)
    elements = _elements(value)
    for index, element in enumerate(elements or []):
        if isinstance(element, dict):
            path = f"{ELEMENTS}[{index}]"
            for key in ("bbox", "color_palette"):
                if key in element and element[key] is None:
                    del element[key]
                    repairs.append(Repair("null_removed", f"{path}.{key}", "was null; the optional field was removed"))
            if "bbox" in element:
                element["bbox"] = repair_bbox(element["bbox"], f"{path}.bbox", repairs)
            _repair_palette(element, path, ELEMENT_PALETTE_MAX, repairs)
    if elements:
        _drop_duplicates(elements, repairs)
    return value


def repair_bbox(bbox: Any, path: str, repairs: list[Repair]) -> Any:
    """Four finite numbers -> four integers on the grid, ordered [y_min, x_min, y_max, x_max] with
    min < max. Anything else is returned as it is, for the verifier to report."""
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        return bbox
    before = list(bbox)
    values = [float(v) for v in bbox]
    if any(isinstance(v, float) and not v.is_integer() for v in bbox) and all(0 <= v <= 1 for v in values):
        values = [v * BBOX_GRID for v in values]
        repairs.append(Repair("bbox_scaled", path, f"{show(before)} looks like fractions of the image; scaled to the "
                              "0-1000 grid"))
    if any(isinstance(v, float) for v in bbox):
        rounded = [math.floor(v + 0.5) for v in values]
        repairs.append(Repair("bbox_rounded", path, f"{show([round(v, 3) for v in values])} rounded to whole numbers "
                              f"{show(rounded)}"))
        values = rounded
    clamped = [min(max(int(v), 0), BBOX_GRID) for v in values]
    if clamped != [int(v) for v in values]:
        repairs.append(Repair("bbox_clamped", path, f"{show([int(v) for v in values])} left the 0-1000 grid; "
                              f"clamped to {show(clamped)}"))
    y0, x0, y1, x1 = clamped
    if y0 > y1 or x0 > x1:
        ordered = [min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1)]
        repairs.append(Repair("bbox_swapped", path, f"{show(clamped)} had a minimum above its maximum; ordered as "
                              f"[y_min, x_min, y_max, x_max] = {show(ordered)}"))
        y0, x0, y1, x1 = ordered
    if y0 == y1 or x0 == x1:
        grown = [*_widen(y0, y1), *_widen(x0, x1)]
        grown = [grown[0], grown[2], grown[1], grown[3]]
        repairs.append(Repair("bbox_widened", path, f"{show([y0, x0, y1, x1])} had zero area; widened to "
                              f"{show(grown)}"))
        y0, x0, y1, x1 = grown
    return [y0, x0, y1, x1]


def _widen(low: int, high: int) -> tuple[int, int]:
    if low < high:
        return low, high
    return (low, low + 1) if low < BBOX_GRID else (low - 1, low)


def _repair_palette(owner: dict, path: str, limit: int, repairs: list[Repair]) -> None:
    palette = owner.get("color_palette")
    if not isinstance(palette, list):
        return
    where = f"{path}.color_palette"
    for index, color in enumerate(palette):
        if not isinstance(color, str):
            continue
        full = None
        if short := _SHORT_HEX.fullmatch(color):
            full = "#" + "".join(c * 2 for c in short.groups()).upper()
        elif _BARE_HEX.fullmatch(color):
            full = "#" + color.upper()
        if full:
            palette[index] = full
            repairs.append(Repair("color_expanded", f"{where}[{index}]", f"{show(color)} written as {show(full)}"))
    if len(palette) > limit:
        repairs.append(Repair("palette_trimmed", where, f"had {len(palette)} colours, at most {limit} are allowed; "
                              f"kept the first {limit}"))
        del palette[limit:]


def _drop_duplicates(elements: list, repairs: list[Repair]) -> None:
    seen: list[Any] = []
    for index in range(len(elements) - 1, -1, -1):
        if any(elements[index] == other for other in elements[:index]):
            seen.append(index)
            del elements[index]
    for index in reversed(seen):
        repairs.append(Repair("duplicate_removed", f"{ELEMENTS}[{index}]", "was identical to an earlier element; "
                              "the copy was removed"))


def _restore_kept(elements: list, kept: list[dict], repairs: list[Repair]) -> None:
    """Each kept element ends up in `elements` exactly as the user had it: an answer's version of it
    (same type and text for text, same type and box for objects) is replaced in place, a missing one
    is appended."""
    for element in kept:
        if element in elements:
            continue
        match = next((i for i, candidate in enumerate(elements)
                      if isinstance(candidate, dict) and candidate not in kept and _same_element(candidate, element)),
                     None)
        if match is not None:
            elements[match] = copy.deepcopy(element)
            repairs.append(Repair("kept_restored", f"{ELEMENTS}[{match}]", "the answer changed an element you kept; "
                                  "your version was put back"))
        else:
            elements.append(copy.deepcopy(element))
            repairs.append(Repair("kept_added", f"{ELEMENTS}[{len(elements) - 1}]", "the answer left out an element "
                                  "you kept; it was added back unchanged"))


def _same_element(candidate: dict, element: dict) -> bool:
    if candidate.get("type") != element.get("type"):
        return False
    if element.get("type") == "text":
        return _loose(candidate.get("text")) == _loose(element.get("text"))
    return element.get("bbox") is not None and candidate.get("bbox") == element.get("bbox")


def _loose(text: Any) -> str | None:
    """Text compared without case, surrounding quotes or differences in spacing."""
    return " ".join(text.strip("\"'“”").casefold().split()) if isinstance(text, str) else None


def _restore_quotes(elements: list, quotes: list[str], kept: list[dict], repairs: list[Repair]) -> None:
    """Every quoted string becomes the exact `text` of a text element: one the answer wrote with
    other case, spacing or quote marks gets the exact string back; a missing one is added."""
    texts = [e.get("text") for e in elements if isinstance(e, dict) and e.get("type") == "text"]
    missing = [quote for quote in quotes if quote not in texts]
    added = 0
    for quote in missing:
        match = next((i for i, e in enumerate(elements) if isinstance(e, dict) and e.get("type") == "text"
                      and e not in kept and e.get("text") not in quotes and _loose(e.get("text")) == _loose(quote)),
                     None)
        if match is not None:
            before = elements[match]["text"]
            elements[match]["text"] = quote
            repairs.append(Repair("quote_restored", f"{ELEMENTS}[{match}].text", f"the answer wrote {show(before)}; "
                                  f"the prompt quotes {show(quote)}, which was put back exactly"))
            continue
        top = 40 + 110 * added
        bbox = [top, 100, top + 90, 900] if top + 90 <= BBOX_GRID else [BBOX_GRID - 90, 100, BBOX_GRID, 900]
        elements.append({"type": "text", "bbox": bbox, "text": quote,
                         "desc": "Clear, legible lettering, large enough to read at a glance."})
        added += 1
        repairs.append(Repair("quote_added", f"{ELEMENTS}[{len(elements) - 1}]", f"the answer left out the quoted "
                              f"text {show(quote)}; a text element with it was added (move its box as you like)"))
