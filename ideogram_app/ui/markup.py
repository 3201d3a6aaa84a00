"""The one escaping rule for user-supplied text shown by the app.

Gradio renders `gr.Markdown` values as Markdown with inline HTML (sanitised, but images, links and
emphasis survive) and toast messages (`gr.Info`/`gr.Warning`/`gr.Error`) as HTML. Anything that
came from a user (caption keys and values in verifier issues, file names, model sources, error
texts quoting input) must be passed through `escape` before it is put into either.

`escape` writes every ASCII punctuation character as a numeric character reference (`*` ->
`&#42;`). A browser shows a reference as its character, and Markdown treats one as literal text,
never as syntax, so the same escaped string is inert in HTML, in Markdown and in HTML inside
Markdown, and reads exactly like the original. Only inside a Markdown code span (backticks) are
references shown undecoded, so user text is never put in one: `code` wraps it in `<code>` instead.
"""
from __future__ import annotations

import re
import string

_REFERENCE = {ord(c): f"&#{ord(c)};" for c in string.punctuation}
# Line and paragraph breaks would let text start Markdown blocks (headings, lists, code); they become
# spaces. Other control characters, lone surrogates (which no UTF-8 response can carry) and the
# bidirectional overrides that can make text display in a misleading order become U+FFFD.
_BREAKS = re.compile(r"\r\n|[\n\r\x0b\x0c\x85\u2028\u2029\t]")
_UNSHOWABLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def escape(text: object) -> str:
    """`text` (str() of it) made safe to put into Markdown or HTML; shows the same characters."""
    text = _UNSHOWABLE.sub("\ufffd", _BREAKS.sub(" ", str(text)))
    escaped = text.translate(_REFERENCE)
    stripped = escaped.lstrip(" ")  # leading spaces at the start of a line could open a code block
    return "&#32;" * (len(escaped) - len(stripped)) + stripped


def code(text: object) -> str:
    """`text` escaped and shown in a monospace `<code>` element (the safe form of a code span)."""
    return f"<code>{escape(text)}</code>"
