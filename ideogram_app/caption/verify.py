"""`verify`: every rule of the official CaptionVerifier and more, as a list of `Issue`s. It never
raises: broken or random input yields issues, so the UI can show them next to the fields."""
from __future__ import annotations

import re
from typing import Any

from .issues import CaptionSyntaxError, Issue
from .model import Caption, PlainText
from .parse import DecodedJSON, decode_text
from .rules import MAX_REPORTED, SURROGATE, check_caption, issue, path_text, printable, summary_issue, walk

_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([0-9A-Fa-f]{4})")
# A JSON string token (unrolled so it never backtracks), or a run of whitespace between tokens.
_LEXEME = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[ \t\r\n]+', re.DOTALL)


def verify(text_or_dict: str | dict | Caption | Any) -> list[Issue]:
    """Issues for a caption given as text, dict or `Caption`; [] means canonical and valid. Never
    raises, whatever the value, in time linear in its size."""
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
        found = [issue("plain_text", "", "this is plain prose, not a JSON caption; it works, but the model was trained "
                       "on JSON captions and follows layout and text far better with one")]
        if surrogate := SURROGATE.search(decoded.text):
            found.append(issue("wrong_type", "", f"the text contains the lone UTF-16 surrogate "
                               f"{printable(surrogate.group())}, which is not a character and cannot be encoded as "
                               "UTF-8; delete it"))
        return found
    return _text_issues(decoded) + decoded.duplicate_keys + check_caption(decoded.value)


def _text_issues(decoded: DecodedJSON) -> list[Issue]:
    """Checks that need the raw text: encoding layers, whitespace, `\\uXXXX` escapes."""
    found: list[Issue] = []
    if decoded.double_encoded:
        found.append(issue("double_encoded", "", "the caption is a JSON string that contains JSON (encoded twice); "
                           "the model must see the inner object, `format`/to_json unwraps it"))
    escaped_tokens, token_count, has_whitespace = _scan(decoded.source)
    if has_whitespace:
        found.append(issue("not_compact", "", "the JSON has whitespace between tokens (pretty-printed); the model "
                           "was trained on compact JSON, `format`/to_json compacts it"))
    if not escaped_tokens:
        return found
    wanted = escaped_tokens[:MAX_REPORTED]
    nodes, string_count = _string_nodes(decoded.value, {index for index, _ in wanted})
    aligned = string_count == token_count and not decoded.duplicate_keys
    for index, escaped in wanted:
        sample = escaped[:8]
        found.append(issue("unicode_escape", path_text(nodes[index]) if aligned else "",
                           f"writes {sample!r} as \\uXXXX escapes; the model was trained on literal characters "
                           "(ensure_ascii=False), `format`/to_json writes them literally"))
    if len(escaped_tokens) > MAX_REPORTED:
        found.append(summary_issue("unicode_escape", len(escaped_tokens) - MAX_REPORTED, "strings with \\uXXXX escapes"))
    return found


def _scan(source: str) -> tuple[list[tuple[int, str]], int, bool]:
    """(index of each string token that writes printable characters as \\uXXXX escapes, with those
    characters; number of string tokens; whether whitespace sits between tokens). `source` is valid
    JSON, so every string token is closed; one regular expression pass keeps this linear."""
    escaped_tokens: list[tuple[int, str]] = []
    token_count = 0
    has_whitespace = False
    for match in _LEXEME.finditer(source):
        token = match.group()
        if token[0] != '"':
            has_whitespace = True
            continue
        if "\\u" in token and (escaped := _escaped_characters(token)):
            escaped_tokens.append((token_count, escaped))
        token_count += 1
    return escaped_tokens, token_count, has_whitespace


def _escaped_characters(token: str) -> str:
    """The printable characters a string token writes as \\uXXXX escapes, with a surrogate pair
    (\\ud83d\\ude00) joined into its character. Lone surrogates are left out: they are no
    characters, `to_json` cannot write them literally, and the value checks report them."""
    found: list[str] = []
    high: tuple[int, int] | None = None  # a high surrogate escape waiting for its low half: (code, end)
    for match in _ESCAPE.finditer(token):
        code = int(match.group(1), 16)
        if 0xDC00 <= code <= 0xDFFF and high is not None and high[1] == match.start(1) - 2:
            found.append(chr(0x10000 + ((high[0] - 0xD800) << 10) + code - 0xDC00))
        elif code >= 0x20 and not 0xD800 <= code <= 0xDFFF:
            found.append(chr(code))
        high = (code, match.end()) if 0xD800 <= code <= 0xDBFF else None
    return "".join(found)


def _string_nodes(value: Any, wanted: set[int]) -> tuple[dict[int, tuple | None], int]:
    """(path node of each `wanted` string, by its position among all strings of the text, object
    keys included; the number of strings). A key comes right before its value, as in the text."""
    nodes: dict[int, tuple | None] = {}
    count = 0
    for node, child in walk(value):
        # an object key (a str step) is a string of its own; both it and a string value locate at `node`
        strings = isinstance(node[1], str) + isinstance(child, str)
        for index in range(count, count + strings):
            if index in wanted:
                nodes[index] = node
        count += strings
    return nodes, count
