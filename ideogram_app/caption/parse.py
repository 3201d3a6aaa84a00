"""Text -> caption. Accepts compact or pretty JSON, a JSON string that itself holds JSON
(double-encoded, as some tools and spreadsheets emit), a ```json fenced block, a dict or a
`Caption`. Prose comes back as `PlainText`; text that starts like JSON but is broken raises
`CaptionSyntaxError` with the line and column, so the editor can point at it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .issues import CaptionFormatError, CaptionSyntaxError, Issue
from .model import Caption, PlainText
from .rules import issue, join_path

_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n(.*?)\n?[ \t]*```", re.DOTALL)


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
        value = json.loads(source, object_pairs_hook=build)
        return value, _duplicate_issues(value, duplicates)
    except json.JSONDecodeError as err:
        line, column = _position(origin, start + err.pos)
        raise CaptionSyntaxError(err.msg + note, line, column) from None
    except RecursionError:
        raise CaptionSyntaxError("nesting too deep" + note, 1, 1) from None


def _duplicate_issues(value: Any, duplicates: dict[int, list[str]], path: str = "") -> list[Issue]:
    found: list[Issue] = []
    if isinstance(value, dict):
        for key in duplicates.get(id(value), []):
            found.append(issue("duplicate_key", join_path(path, key),
                               f"key {key!r} appears more than once in the same object, and only the last one "
                               "would be kept; merge them into one"))
        for key, child in value.items():
            found += _duplicate_issues(child, duplicates, join_path(path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _duplicate_issues(child, duplicates, join_path(path, index))
    return found


def decode_text(text: str) -> DecodedJSON | PlainText:
    """JSON-looking text -> `DecodedJSON`; prose -> `PlainText`; broken JSON -> CaptionSyntaxError."""
    text = text.removeprefix("\ufeff")  # a byte-order mark from Windows editors is not content
    fence = _FENCE.fullmatch(text.strip())
    body = fence.group(1) if fence else text
    body_offset = text.index(body) if fence else 0
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
    `CaptionSyntaxError` (broken JSON) or `CaptionFormatError` (JSON that is not a caption)."""
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
