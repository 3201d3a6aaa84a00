"""Text -> caption. Accepts compact or pretty JSON, a JSON string that itself holds JSON
(double-encoded, as some tools and spreadsheets emit), a ```json fenced block, a dict or a
`Caption`. Prose comes back as `PlainText`; text that starts like JSON but is broken raises
`CaptionSyntaxError` with the line and column, so the editor can point at it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .issues import CaptionFormatError, CaptionSyntaxError, Issue
from .model import Caption, PlainText
from .rules import MAX_REPORTED, issue, path_text, show, summary_issue, walk

_FENCE_OPEN = re.compile(r"```[A-Za-z]*[ \t]*\n")


@dataclass
class DecodedJSON:
    """A decoded caption text. `source` is the JSON text actually parsed (the inner text when
    double-encoded), which `verify` scans for escapes and whitespace."""

    value: Any
    source: str
    double_encoded: bool = False
    duplicate_keys: list[Issue] = field(default_factory=list)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _read_int(digits: str) -> int | float:
    """An integer literal. Python refuses to read integers longer than
    `sys.get_int_max_str_digits()` with a bare ValueError; reading them as infinity (like json
    reads `1e400`) lets the value checks report them at their path as too large a number."""
    try:
        return int(digits)
    except ValueError:
        return -math.inf if digits.startswith("-") else math.inf


def _loads(source: str, origin: str, start: int, note: str = "") -> tuple[Any, list[Issue]]:
    duplicates: dict[int, list[str]] = {}

    def build(pairs: list[tuple[str, Any]]) -> dict:
        obj: dict = {}
        for key, value in pairs:
            if key in obj:
                duplicates.setdefault(id(obj), []).append(key)
            obj[key] = value
        return obj

    try:
        value = json.loads(source, object_pairs_hook=build, parse_int=_read_int)
        return value, _duplicate_issues(value, duplicates)
    except json.JSONDecodeError as err:
        line, column = _position(origin, start + err.pos)
        raise CaptionSyntaxError(err.msg + note, line, column) from None
    except RecursionError:
        raise CaptionSyntaxError("nesting too deep" + note, 1, 1) from None


def _duplicate_issues(value: Any, duplicates: dict[int, list[str]]) -> list[Issue]:
    """An issue per repeated key, in document order (see `rules.walk` for why it walks that way)."""
    if not duplicates:
        return []
    found = [((None, key), key) for key in duplicates.get(id(value), [])]
    for node, child in walk(value):
        if isinstance(child, dict) and id(child) in duplicates:
            found += [((node, key), key) for key in duplicates[id(child)]]
    issues = [issue("duplicate_key", path_text(node), f"key {show(key)} appears more than once in the same object, "
                    "and only the last one would be kept; merge them into one") for node, key in found[:MAX_REPORTED]]
    if len(found) > MAX_REPORTED:
        issues.append(summary_issue("duplicate_key", len(found) - MAX_REPORTED, "repeated keys"))
    return issues


def _unfence(text: str) -> tuple[str, int] | None:
    """(body, offset of the body in `text`) when `text` is one ```json fenced block (whitespace
    around it aside), else None. Plain string scanning: the obvious regular expression backtracks
    quadratically over long runs of spaces."""
    start, end = len(text) - len(text.lstrip()), len(text.rstrip())
    opening = _FENCE_OPEN.match(text, start, end)
    if opening is None or opening.end() > end - 3 or not text.endswith("```", 0, end):
        return None
    body_end = len(text[:end - 3].rstrip(" \t"))
    if body_end > opening.end() and text[body_end - 1] == "\n":
        body_end -= 1
    return text[opening.end():body_end], opening.end()


def decode_text(text: str) -> DecodedJSON | PlainText:
    """JSON-looking text -> `DecodedJSON`; prose -> `PlainText`; broken JSON -> CaptionSyntaxError."""
    text = text.removeprefix("\ufeff")  # a byte-order mark from Windows editors is not content
    body, body_offset = _unfence(text) or (text, 0)
    stripped = body.lstrip()
    leading = len(body) - len(stripped)
    if stripped.startswith(("{", "[")):
        value, dups = _loads(body, text, body_offset)
        return DecodedJSON(value, body.strip(), duplicate_keys=dups)
    if stripped.startswith('"'):
        looks_json = stripped[1:].lstrip().startswith(("{", "["))
        try:
            inner = json.loads(stripped)
        except json.JSONDecodeError as err:
            if not looks_json:
                return PlainText(text)
            line, column = _position(text, body_offset + leading + err.pos)
            raise CaptionSyntaxError(err.msg, line, column) from None
        if isinstance(inner, str) and inner.lstrip().startswith(("{", "[")):
            value, dups = _loads(inner, inner, 0, " (inside the double-encoded JSON string)")
            return DecodedJSON(value, inner.strip(), double_encoded=True, duplicate_keys=dups)
    return PlainText(text)


def parse(text_or_dict: str | dict | Caption) -> Caption | PlainText:
    """Anything a user may paste -> `Caption`, or `PlainText` for prose. Raises
    `CaptionSyntaxError` (broken JSON), `CaptionFormatError` (JSON that is not a caption, values
    JSON cannot carry included) or `TypeError` (neither str, dict nor Caption), nothing else, in
    time linear in the length of the text."""
    if isinstance(text_or_dict, Caption):
        return text_or_dict
    if isinstance(text_or_dict, dict):
        return Caption.from_dict(text_or_dict)
    if not isinstance(text_or_dict, str):
        raise TypeError(f"parse() takes a str, dict or Caption, got {type(text_or_dict).__name__}")
    decoded = decode_text(text_or_dict)
    if isinstance(decoded, PlainText):
        return decoded
    if decoded.duplicate_keys:
        raise CaptionFormatError(decoded.duplicate_keys)
    return Caption.from_dict(decoded.value)
