"""The caption rules (docs/caption.md, "The format") as constants plus the structural checks on a parsed
caption. `verify` adds the checks that need the raw text; `Caption.from_dict` reuses these checks
so the model and the verifier can never disagree about what a valid caption is.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator

from .issues import Issue

TOP_KEYS = ("high_level_description", "style_description", "compositional_deconstruction")
PHOTO_STYLE_KEYS = ("aesthetics", "lighting", "photo", "medium", "color_palette")
ART_STYLE_KEYS = ("aesthetics", "lighting", "medium", "art_style", "color_palette")
STYLE_REQUIRED = ("aesthetics", "lighting", "medium")
COMPOSITION_KEYS = ("background", "elements")
OBJ_KEYS = ("type", "bbox", "desc", "color_palette")
TEXT_KEYS = ("type", "bbox", "text", "desc", "color_palette")
ELEMENT_KEYS = {"obj": OBJ_KEYS, "text": TEXT_KEYS}
STYLE_PALETTE_MAX = 16
ELEMENT_PALETTE_MAX = 5
BBOX_GRID = 1000

# code -> severity. Policy: what `to_json` repairs by itself is a warning; what needs a human
# decision is an error (unknown keys included: the model draws them as junk).
CODES: dict[str, str] = {
    "json_syntax": "error",
    "not_an_object": "error",
    "duplicate_key": "error",
    "unknown_key": "error",
    "missing_field": "error",
    "wrong_type": "error",
    "style_kind": "error",
    "element_type": "error",
    "bbox_shape": "error",
    "bbox_range": "error",
    "bbox_order": "error",
    "bbox_empty": "error",
    "palette_length": "error",
    "color_format": "error",
    "empty_text": "error",
    "literal_escape": "error",
    "duplicate_element": "error",
    "key_order": "warning",
    "color_case": "warning",
    "unicode_escape": "warning",
    "not_compact": "warning",
    "double_encoded": "warning",
    "missing_description": "warning",
    "plain_text": "warning",
}

# Codes whose problem cannot be held by the dataclasses: `Caption.from_dict` refuses these.
STRUCTURAL_CODES = frozenset({"not_an_object", "duplicate_key", "missing_field", "wrong_type", "element_type", "bbox_shape"})

HEX_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")
LITERAL_ESCAPE = re.compile(r"\\u[0-9A-Fa-f]{4}")
SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str these are always lone: json joins valid pairs

SHOWN_CHARS = 60  # how much of a value a message quotes
PATH_KEY_CHARS = 80  # how much of an object key a path spells out
MAX_REPORTED = 20  # per check that walks arbitrary nesting, then one summary issue


def issue(code: str, path: str, message: str) -> Issue:
    return Issue(code, path, message, CODES[code])  # type: ignore[arg-type]


def printable(text: str) -> str:
    """`text` with lone surrogates written as `\\udXXX`, so issues can always be printed and
    encoded as UTF-8 (the CLI prints them; the UI sends them as JSON)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if SURROGATE.search(text) else text


def show(value: Any) -> str:
    """A value quoted in a message: at most about SHOWN_CHARS characters, printable, and never
    raising, whatever the value (huge integers, cycles, deep nesting, types JSON has no form for).
    Strings are quoted like Python does, everything else as JSON."""
    if isinstance(value, str):
        text = repr(value[:SHOWN_CHARS - 2])
        return printable(text if len(value) <= SHOWN_CHARS - 2 else text + "...")
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return f"{type_name(value)} that cannot be written as JSON"
    return printable(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "...")


def key_step(key: Any) -> str:
    """An object key as one step of a path. Long keys are cut (a path locates, it need not repeat
    megabytes of key), keys that are not strings (only in dicts built in Python) are quoted."""
    if not isinstance(key, str):
        return show(key)
    return printable(key if len(key) <= PATH_KEY_CHARS else key[:PATH_KEY_CHARS - 3] + "...")


def join_path(path: str, step: int | str) -> str:
    """`path` plus a list index (an int: `[3]`) or an object key (a str: `.key`)."""
    if isinstance(step, int):
        return f"{path}[{step}]"
    step = key_step(step)
    return f"{path}.{step}" if path else step


def key_path(path: str, key: Any) -> str:
    """`path` plus an object key of any type (`{3: ...}` is `.3`, not the index `[3]`)."""
    return join_path(path, key_step(key))


def path_text(node: tuple | None) -> str:
    """The path of a node of an iterative walk. Walks over arbitrary nesting carry paths as linked
    `(parent, step)` tuples and spell out only those an issue needs: building every path string
    eagerly costs depth x size, quadratic for a long chain of keys above a wide list."""
    parts: list[str] = []
    while node is not None:
        node, step = node
        parts.append(f"[{step}]" if isinstance(step, int) else "." + key_step(step))
    return "".join(reversed(parts)).removeprefix(".")


CYCLE = object()  # what `walk` yields for a container found inside itself


def _children(container: dict | list) -> Iterator[tuple[int | str, Any]]:
    if isinstance(container, list):
        return enumerate(container)
    return ((key if isinstance(key, str) else key_step(key), child) for key, child in container.items())


def walk(value: Any) -> Iterator[tuple[tuple, Any]]:
    """(path node, value) for everything inside `value`, depth first in document order; a node is
    `(parent node, step)` with an int step for a list index and a str for an object key (see
    `path_text`). A stack of iterators keeps memory proportional to the depth, not the size, and no
    depth hits the recursion limit. A container found inside itself (only possible in values built
    in Python) is yielded as `CYCLE` and not entered."""
    if not isinstance(value, (dict, list)):
        return
    stack: list[tuple[Any, Iterator, tuple | None]] = [(value, _children(value), None)]
    ancestors = {id(value)}
    while stack:
        container, children, parent = stack[-1]
        for step, child in children:
            node = (parent, step)
            if not isinstance(child, (dict, list)):
                yield node, child
            elif id(child) in ancestors:
                yield node, CYCLE
            else:
                yield node, child
                ancestors.add(id(child))
                stack.append((child, _children(child), node))
                break
        else:
            ancestors.discard(id(container))
            stack.pop()


def summary_issue(code: str, extra: int, what: str) -> Issue:
    """One issue standing for the `extra` findings of a walk beyond the first MAX_REPORTED."""
    return issue(code, "", f"{extra} more {what} not listed here (the first {MAX_REPORTED} are listed); "
                 "fix those and check again")


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_caption(data: Any) -> list[Issue]:
    """All rules that can be checked on the parsed value (dict order included). Never raises,
    whatever `data` holds."""
    out: list[Issue] = []
    if not isinstance(data, dict):
        out.append(issue("not_an_object", "", f"a caption is a JSON object, got {type_name(data)}; "
                         "wrap the content as {\"compositional_deconstruction\": {...}}"))
        return out
    _check_json_values(data, out)
    _check_keys(data, TOP_KEYS, "", out)
    if "high_level_description" in data:
        _check_text(data["high_level_description"], "high_level_description", out)
    else:
        out.append(issue("missing_description", "high_level_description",
                         "no high_level_description; add one sentence naming the medium and the subject "
                         "(optional, but the model was trained with it)"))
    if "style_description" in data:
        _check_style(data["style_description"], "style_description", out)
    if "compositional_deconstruction" in data:
        _check_composition(data["compositional_deconstruction"], "compositional_deconstruction", out)
    else:
        out.append(issue("missing_field", "compositional_deconstruction",
                         "compositional_deconstruction is required; add "
                         "{\"background\": \"...\", \"elements\": [...]}"))
    return out


def _json_value_problem(value: Any) -> str | None:
    """Why `value` cannot be carried by JSON text and UTF-8, or None for a plain JSON scalar."""
    if isinstance(value, str):
        match = SURROGATE.search(value)
        return None if match is None else (
            f"contains the lone UTF-16 surrogate {printable(match.group())}, which is not a character and cannot be "
            "encoded as UTF-8; delete it, or write the whole character (a pair such as \\ud83d\\ude00 is fine)")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return "is NaN, which is not a JSON number; write a number"
        return None if math.isfinite(value) else (
            "is too large a number for JSON (it reads as infinity); write a number of ordinary size")
    if isinstance(value, int):
        if value.bit_length() < 1000:  # far below the longest integer Python will print (sys.get_int_max_str_digits)
            return None
        try:
            str(value)
        except ValueError:
            return "is an integer with too many digits to read or write; write a number of ordinary size"
        return None
    return f"is {type_name(value)}, which JSON has no form for; use a string, number, list or object"


def _check_json_values(data: dict, out: list[Issue]) -> None:
    """Values anywhere in the caption (unknown keys included: `to_json` keeps them) that JSON text
    and UTF-8 cannot carry: NaN and infinities (Python's json reads `NaN`, `Infinity`, and `1e400`
    overflows to infinity), integers too long to print, lone surrogates (json reads "\\ud800", no
    UTF-8 encoder writes it), object keys that are not strings and Python types JSON has no form
    for (dicts built in Python), and cycles. Reported as `wrong_type`, which `Caption.from_dict`
    refuses, so `to_json` only ever writes valid, encodable JSON."""
    found: list[tuple[tuple | None, str]] = []

    def check_keys(obj: dict, node: tuple | None) -> None:
        for key in obj:
            if not isinstance(key, str):
                found.append(((node, key_step(key)), f"is a key that is {type_name(key)}; JSON object keys are strings"))
            elif SURROGATE.search(key):
                found.append(((node, key), "is a key that " + _json_value_problem(key)))

    check_keys(data, None)
    for node, child in walk(data):
        if child is CYCLE:
            found.append((node, "contains itself (a cycle), which JSON cannot write"))
        elif isinstance(child, dict):
            check_keys(child, node)
        elif not isinstance(child, list) and (problem := _json_value_problem(child)):
            found.append((node, problem))
    for node, problem in found[:MAX_REPORTED]:
        out.append(issue("wrong_type", path_text(node), problem))
    if len(found) > MAX_REPORTED:
        out.append(summary_issue("wrong_type", len(found) - MAX_REPORTED, "values that JSON cannot carry"))


def _check_keys(obj: dict, canonical: tuple[str, ...] | None, path: str, out: list[Issue],
                allowed: tuple[str, ...] | None = None, hint: str = "") -> None:
    """Unknown keys (errors) and the order of the known ones (a warning `to_json` fixes)."""
    allowed = allowed or canonical or ()
    for key in obj:
        if key not in allowed:
            where = f" in {path}" if path else " at the top level"
            extra = (" (aspect_ratio belongs to the image size setting, not the caption)"
                     if key == "aspect_ratio" else hint if key == "text" else "")
            out.append(issue("unknown_key", key_path(path, key),
                             f"unknown key {show(key)}{where}: the model renders unknown keys as junk; delete it "
                             f"or move its content into a known field (allowed: {', '.join(allowed)}){extra}"))
    if canonical is None:
        return
    present = [key for key in obj if key in canonical]
    expected = [key for key in canonical if key in obj]
    if present != expected:
        out.append(issue("key_order", path, f"keys are in the order {', '.join(present)}; the model was trained on "
                         f"{', '.join(expected)}. Reorder them (`format` / to_json does this)"))


def _check_text(value: Any, path: str, out: list[Issue]) -> None:
    if not isinstance(value, str):
        out.append(issue("wrong_type", path, f"expected a string, got {type_name(value)}; write it as \"...\""))
        return
    if not value.strip():
        out.append(issue("empty_text", path, "is empty; describe it in words, or delete the field/element"))
    match = LITERAL_ESCAPE.search(value)
    if match:
        out.append(issue("literal_escape", path,
                         f"contains the literal characters {match.group()!r}, which the model would draw as text; "
                         "replace the escape with the character itself (e.g. © instead of \\u00a9)"))


def _check_style(style: Any, path: str, out: list[Issue]) -> None:
    if not isinstance(style, dict):
        out.append(issue("wrong_type", path, f"expected an object, got {type_name(style)}; "
                         "style_description holds aesthetics, lighting, photo or art_style, medium, color_palette"))
        return
    has_photo, has_art = "photo" in style, "art_style" in style
    canonical = PHOTO_STYLE_KEYS if has_photo and not has_art else ART_STYLE_KEYS if has_art and not has_photo else None
    _check_keys(style, canonical, path, out, allowed=PHOTO_STYLE_KEYS + ("art_style",))
    if has_photo and has_art:
        out.append(issue("style_kind", path, "has both photo and art_style; keep photo for photographs or "
                         "art_style for everything else, and delete the other"))
    elif not has_photo and not has_art:
        out.append(issue("style_kind", path, "needs exactly one of photo (camera details for a photograph) or "
                         "art_style (for illustration, render, design); add one"))
    for key in STYLE_REQUIRED:
        if key not in style:
            out.append(issue("missing_field", join_path(path, key),
                             f"{key} is required in style_description; add it or delete the whole style block"))
    for key in ("aesthetics", "lighting", "photo", "medium", "art_style"):
        if key in style:
            _check_text(style[key], join_path(path, key), out)
    if "color_palette" in style:
        _check_palette(style["color_palette"], join_path(path, "color_palette"), STYLE_PALETTE_MAX, out)


def _check_palette(palette: Any, path: str, limit: int, out: list[Issue]) -> None:
    if not isinstance(palette, list):
        out.append(issue("wrong_type", path, f"expected a list of \"#RRGGBB\" colours, got {type_name(palette)}"))
        return
    if len(palette) > limit:
        out.append(issue("palette_length", path, f"has {len(palette)} colours, at most {limit} are allowed here; "
                         f"remove {len(palette) - limit}"))
    for index, color in enumerate(palette):
        color_path = join_path(path, index)
        if not isinstance(color, str) or not HEX_COLOR.fullmatch(color):
            out.append(issue("color_format", color_path, f"{show(color)} is not a colour in #RRGGBB form; write six hex "
                             "digits with upper-case letters, e.g. \"#1A2B3C\""))
        elif color != color.upper():
            out.append(issue("color_case", color_path, f"{show(color)} has lower-case hex digits; write "
                             f"{show(color.upper())} (to_json upper-cases it)"))


def _check_composition(comp: Any, path: str, out: list[Issue]) -> None:
    if not isinstance(comp, dict):
        out.append(issue("wrong_type", path, f"expected an object with background and elements, got {type_name(comp)}"))
        return
    _check_keys(comp, COMPOSITION_KEYS, path, out)
    if "background" in comp:
        _check_text(comp["background"], join_path(path, "background"), out)
    else:
        out.append(issue("missing_field", join_path(path, "background"),
                         "background is required; describe what fills the image behind the elements"))
    elements_path = join_path(path, "elements")
    if "elements" not in comp:
        out.append(issue("missing_field", elements_path, "elements is required; use [] for an image without elements"))
        return
    elements = comp["elements"]
    if not isinstance(elements, list):
        out.append(issue("wrong_type", elements_path, f"expected a list of elements, got {type_name(elements)}"))
        return
    seen: dict[str, int] = {}
    for index, element in enumerate(elements):
        element_path = join_path(elements_path, index)
        _check_element(element, element_path, out)
        fingerprint = _fingerprint(element)
        if fingerprint is None:
            continue
        if fingerprint in seen:
            out.append(issue("duplicate_element", element_path,
                             f"is identical to elements[{seen[fingerprint]}]; delete it, or give each copy its own "
                             "bbox and description"))
        else:
            seen[fingerprint] = index


def _fingerprint(value: Any) -> str | None:
    """What makes two elements identical, or None for an element JSON cannot write (reported by
    `_check_json_values`; such an element is compared with nothing)."""
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _check_element(element: Any, path: str, out: list[Issue]) -> None:
    if not isinstance(element, dict):
        out.append(issue("wrong_type", path, f"expected an element object, got {type_name(element)}"))
        return
    kind = element.get("type")
    if "type" not in element:
        out.append(issue("missing_field", join_path(path, "type"), "type is required: \"obj\" or \"text\""))
    elif not isinstance(kind, str) or kind not in ELEMENT_KEYS:  # a list or object is unhashable
        out.append(issue("element_type", join_path(path, "type"),
                         f"type {show(kind)} is not an element type the model knows; use \"obj\" for things and "
                         "\"text\" for lettering to render"))
    known = ELEMENT_KEYS.get(kind) if isinstance(kind, str) else None
    _check_keys(element, known, path, out, allowed=TEXT_KEYS if known is None else known,
                hint="; obj elements carry no text: change type to \"text\" to render it")
    if "bbox" in element:
        check_bbox(element["bbox"], join_path(path, "bbox"), out)
    if kind == "text":
        if "text" in element:
            _check_text(element["text"], join_path(path, "text"), out)
        else:
            out.append(issue("missing_field", join_path(path, "text"),
                             "text elements need \"text\": the exact string to render (use \\n for line breaks)"))
    if "desc" in element:
        _check_text(element["desc"], join_path(path, "desc"), out)
    else:
        out.append(issue("missing_field", join_path(path, "desc"),
                         "desc is required; say what the element looks like (for text: font, colour, size)"))
    if "color_palette" in element:
        _check_palette(element["color_palette"], join_path(path, "color_palette"), ELEMENT_PALETTE_MAX, out)


def check_bbox(bbox: Any, path: str, out: list[Issue]) -> None:
    """The one rule for a box, wherever it comes from (an element's bbox, a region edit's box)."""
    shape_ok = (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) for v in bbox))
    if not shape_ok:
        out.append(issue("bbox_shape", path, f"must be four integers [y_min, x_min, y_max, x_max] on a 0-1000 grid, "
                         f"got {show(bbox)}; write exactly four whole numbers"))
        return
    if any(v < 0 or v > BBOX_GRID for v in bbox):
        out.append(issue("bbox_range", path, f"{show(bbox)} leaves the 0-1000 grid; clamp each value into 0..1000 "
                         "(the grid is relative to the image, not pixels)"))
    y_min, x_min, y_max, x_max = bbox
    if y_min > y_max or x_min > x_max:
        out.append(issue("bbox_order", path, f"{show(bbox)} has a minimum above its maximum; the order is "
                         "[y_min, x_min, y_max, x_max] (y first), so swap the offending pair"))
    elif y_min == y_max or x_min == x_max:
        out.append(issue("bbox_empty", path, f"{show(bbox)} has zero area; give it a height and a width, or drop the "
                         "bbox to let the model place the element"))
