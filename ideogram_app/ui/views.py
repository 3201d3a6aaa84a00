"""What the compose tab shows for an `EditorState`: canvas value, JSON text, field values, issues.

Every view is derived from the one caption dict in the state, which is how the canvas, the
inspector, the global fields and the JSON editor stay in agreement.
"""
from __future__ import annotations

import json
from typing import Any

from ideogram_app.caption import Issue, verify
from ideogram_app.model.prompt_tokenizer import MAX_TEXT_TOKENS

from .markup import code, escape
from .state import EditorState, empty_caption

ELEMENT_PALETTE_SLOTS = 5
IMAGE_PALETTE_SLOTS = 16
CHARS_PER_TOKEN_ESTIMATE = 3.5
CHAT_TEMPLATE_TOKENS = 10
LISTED_ISSUES = 50  # an issue list longer than this helps nobody; the rest is counted
DEFAULT_PICKER_COLORS = ("#1F2937", "#F59E0B", "#10B981", "#3B82F6", "#EF4444", "#8B5CF6", "#EC4899", "#14B8A6",
                         "#F97316", "#84CC16", "#0EA5E9", "#A855F7", "#F43F5E", "#22C55E", "#EAB308", "#64748B")


def pretty_json(value: Any, indent: int = 0) -> str:
    """Indented JSON for people, with short lists (bbox, palettes) kept on one line. Display only:
    the model always receives the caption core's compact `to_json`."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict) and value:
        rows = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {pretty_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(rows) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        rows = [inner + pretty_json(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(rows) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def json_text(state: EditorState) -> str:
    return state.plain_text if state.plain_text is not None else pretty_json(state.caption)


def element_path(index: int) -> str:
    return f"compositional_deconstruction.elements[{index}]"


BLANK_NOTE = "Nothing to check yet: draw a box, pick a template or paste a caption."


def is_blank(state: EditorState) -> bool:
    """The empty caption a session starts with: the verifier would call its empty background an
    error, but nobody has made a mistake yet, so the views show no issue for it."""
    return state.plain_text is None and state.caption == empty_caption()


def caption_issues(state: EditorState) -> list[Issue]:
    return verify(state.caption)


def _issues_for_element(issues: list[Issue], index: int) -> list[Issue]:
    prefix = element_path(index)
    return [i for i in issues if i.path == prefix or i.path.startswith(prefix + ".") or i.path.startswith(prefix + "[")]


def canvas_value(state: EditorState, issues: list[Issue] | None = None) -> dict:
    issues = caption_issues(state) if issues is None else issues
    elements = []
    for index, element in enumerate(state.elements):
        mine = [i for i in _issues_for_element(issues, index) if i.severity == "error"]
        elements.append({"type": element.get("type"), "bbox": element.get("bbox"), "text": element.get("text") or "",
                         "desc": element.get("desc") or "",  # the canvas sets these as text, never as markup
                         "issue": f"{mine[0].path.rsplit('.', 1)[-1]}: {mine[0].message}" if mine else ""})
    return {"elements": elements, "selected": state.selected, "aspect": state.width / state.height,
            "background": state.background_image, "opacity": state.background_opacity}


def issues_markdown(issues: list[Issue], empty: str = "") -> str:
    """A Markdown list of issues. Paths and messages quote the user's keys and values, so both go
    through `markup.escape` (a path is shown in `<code>`: a backtick key would end a code span)."""
    if not issues:
        return empty
    rows = []
    for item in issues[:LISTED_ISSUES]:
        where = " " + code(item.path.removeprefix("compositional_deconstruction.")) if item.path else ""
        rows.append(f"- **{item.severity}**{where}: {escape(item.message)}")
    if len(issues) > LISTED_ISSUES:
        rows.append(f"- … and {len(issues) - LISTED_ISSUES} more")
    return "\n".join(rows)


def split_issues(state: EditorState, issues: list[Issue]) -> tuple[list[Issue], list[Issue]]:
    """(issues of the selected element, issues of the scene fields: description, style, background)."""
    element = _issues_for_element(issues, state.selected) if state.selected is not None else []
    scene = [i for i in issues if not i.path.startswith("compositional_deconstruction.elements")]
    return element, scene


def issue_summary(issues: list[Issue]) -> str:
    errors = sum(i.severity == "error" for i in issues)
    warnings = len(issues) - errors
    if not issues:
        return "The caption is valid and canonical."
    return f"**{errors} error(s), {warnings} warning(s)**\n\n" + issues_markdown(issues)


def token_label(prompt: str, count_tokens=None) -> str:
    """'N / 2048 tokens', exact with the model's tokenizer, otherwise a labelled estimate."""
    if count_tokens is not None:
        count, how = count_tokens(prompt), "exact (model tokenizer)"
    else:
        count = CHAT_TEMPLATE_TOKENS + round(len(prompt) / CHARS_PER_TOKEN_ESTIMATE)
        how = "estimate: no model tokenizer loaded"
    flag = " **over the limit**" if count > MAX_TEXT_TOKENS else ""
    return f"**{'~' if count_tokens is None else ''}{count} / {MAX_TEXT_TOKENS} tokens**{flag} · {how}"


def inspector_values(state: EditorState) -> dict:
    element = state.selected_element()
    if element is None:
        return {"el_title": "No element selected: draw a box on the canvas or pick one.", "el_type": "obj",
                "el_text": "", "el_desc": "", "el_has_box": False, "el_palette_count": 0,
                "el_palette": list(DEFAULT_PICKER_COLORS[:ELEMENT_PALETTE_SLOTS])}
    palette = element.get("color_palette") or []
    pickers = list(palette[:ELEMENT_PALETTE_SLOTS]) + list(DEFAULT_PICKER_COLORS[len(palette):ELEMENT_PALETTE_SLOTS])
    bbox = element.get("bbox")
    where = f"bbox [y_min, x_min, y_max, x_max] = {bbox}" if bbox else "no box (the model places it)"
    return {"el_title": escape(f"Element {state.selected + 1} of {len(state.elements)} · {where}"),
            "el_type": element["type"], "el_text": element.get("text") or "", "el_desc": element.get("desc") or "",
            "el_has_box": bool(bbox), "el_palette_count": len(palette), "el_palette": pickers}


def scene_values(state: EditorState) -> dict:
    caption = state.caption
    style = caption.get("style_description") or {}
    kind = "none" if not style else ("art" if "art_style" in style and "photo" not in style else "photo")
    palette = style.get("color_palette") or []
    pickers = list(palette[:IMAGE_PALETTE_SLOTS]) + list(DEFAULT_PICKER_COLORS[len(palette):IMAGE_PALETTE_SLOTS])
    return {"hld": caption.get("high_level_description") or "",
            "background": caption["compositional_deconstruction"].get("background") or "",
            "style_kind": kind, "aesthetics": style.get("aesthetics", ""), "lighting": style.get("lighting", ""),
            "photo_or_art": style.get("photo") if kind == "photo" else style.get("art_style", ""),
            "medium": style.get("medium", ""), "palette_count": len(palette), "palette": pickers}
