"""`verify`: every rule of the official CaptionVerifier and more, as a list of `Issue`s. It never
raises: broken or random input yields issues, so the UI can show them next to the fields."""
from __future__ import annotations

import re
from typing import Any, Iterator

from .issues import CaptionSyntaxError, Issue
from .model import Caption, PlainText
from .parse import DecodedJSON, decode_text
from .rules import check_caption, issue, join_path

_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([0-9A-Fa-f]{4})")
_WHITESPACE = " \t\r\n"


def verify(text_or_dict: str | dict | Caption | Any) -> list[Issue]:
    """Issues for a caption given as text, dict or `Caption`; [] means canonical and valid."""
    if isinstance(text_or_dict, Caption):
        return check_caption(text_or_dict.to_dict())
    if not isinstance(text_or_dict, str):
        return check_caption(text_or_dict)
    try:
        decoded = decode_text(text_or_dict)
    except CaptionSyntaxError as err:
        return [issue("json_syntax", "", f"invalid JSON at line {err.line}, column {err.column}: {err.reason}; fix "
                      "the text there (usual causes: a trailing comma, a missing comma or quote, single quotes)")]
    if isinstance(decoded, PlainText):
        return [issue("plain_text", "", "this is plain prose, not a JSON caption; it works, but the model was trained "
                      "on JSON captions and follows layout and text far better with one")]
    return _text_issues(decoded) + decoded.duplicate_keys + check_caption(decoded.value)


def _text_issues(decoded: DecodedJSON) -> list[Issue]:
    """Checks that need the raw text: encoding layers, whitespace, `\\uXXXX` escapes."""
    found: list[Issue] = []
    if decoded.double_encoded:
        found.append(issue("double_encoded", "", "the caption is a JSON string that contains JSON (encoded twice); "
                           "the model must see the inner object, `format`/to_json unwraps it"))
    tokens, has_whitespace = _scan(decoded.source)
    if has_whitespace:
        found.append(issue("not_compact", "", "the JSON has whitespace between tokens (pretty-printed); the model "
                           "was trained on compact JSON, `format`/to_json compacts it"))
    paths = list(_string_paths(decoded.value))
    aligned = len(paths) == len(tokens) and not decoded.duplicate_keys
    for index, token in enumerate(tokens):
        codes = [int(m.group(1), 16) for m in _ESCAPE.finditer(token)]
        escaped = [c for c in codes if c >= 0x20]
        if escaped:
            sample = "".join(chr(c) for c in escaped if not 0xD800 <= c <= 0xDFFF)[:8] or "non-BMP characters"
            found.append(issue("unicode_escape", paths[index] if aligned else "",
                               f"writes {sample!r} as \\uXXXX escapes; the model was trained on literal characters "
                               "(ensure_ascii=False), `format`/to_json writes them literally"))
    return found


def _scan(source: str) -> tuple[list[str], bool]:
    """Raw string tokens in document order, and whether whitespace sits outside them. `source`
    is valid JSON, so every string token is closed."""
    tokens: list[str] = []
    has_whitespace = False
    i = 0
    while i < len(source):
        if source[i] == '"':
            j = i + 1
            while source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            tokens.append(source[i:j + 1])
            i = j + 1
        else:
            has_whitespace = has_whitespace or source[i] in _WHITESPACE
            i += 1
    return tokens, has_whitespace


def _string_paths(value: Any, path: str = "") -> Iterator[str]:
    """Paths of every string (object keys included) in the order they appear in the text."""
    if isinstance(value, dict):
        for key, child in value.items():
            child_path = join_path(path, key)
            yield child_path
            yield from _string_paths(child, child_path)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _string_paths(child, join_path(path, index))
    elif isinstance(value, str):
        yield path
