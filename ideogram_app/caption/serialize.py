"""Caption -> the exact string the model sees: canonical key order, compact separators, literal
non-ASCII, upper-case hex (the training format; docs/caption.md, "The format")."""
from __future__ import annotations

import json

from .issues import CaptionFormatError
from .model import Caption, PlainText
from .parse import parse
from .rules import SURROGATE, check_caption, issue


def to_json(caption_or_dict: Caption | dict | str) -> str:
    """Canonical compact JSON. Unknown keys are kept (appended after the known ones), never dropped:
    `verify` reports them as errors so the caller can decide. Raises `CaptionFormatError` for JSON
    that is not a caption (or a `Caption` holding values JSON cannot carry), `ValueError` for prose,
    `CaptionSyntaxError` for broken JSON text and `TypeError` for other types; nothing else. The
    result is always valid JSON that encodes as UTF-8."""
    caption = parse(caption_or_dict)
    if isinstance(caption, PlainText):
        raise ValueError("this is plain text, not a JSON caption; pass plain prompts to the pipeline as they are")
    data = caption.to_dict()
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is None or SURROGATE.search(text):
        # Only a `Caption` built in Python gets here: parsed input was checked by `Caption.from_dict`.
        found = [i for i in check_caption(data) if i.code == "wrong_type"]
        raise CaptionFormatError(found or [issue("wrong_type", "", "the caption is nested too deeply to be "
                                                 "written as JSON")])
    return text
