"""Caption -> the exact string the model sees: canonical key order, compact separators, literal
non-ASCII, upper-case hex (the training format; ideogram4-model.md §8.1)."""
from __future__ import annotations

import json

from .model import Caption, PlainText
from .parse import parse


def to_json(caption_or_dict: Caption | dict | str) -> str:
    """Canonical compact JSON. Unknown keys are kept (appended after the known ones), never dropped:
    `verify` reports them as errors so the caller can decide. Raises `CaptionFormatError` for JSON
    that is not a caption, `ValueError` for prose, and `CaptionSyntaxError` for broken JSON text."""
    caption = parse(caption_or_dict)
    if isinstance(caption, PlainText):
        raise ValueError("this is plain text, not a JSON caption; pass plain prompts to the pipeline as they are")
    return json.dumps(caption.to_dict(), ensure_ascii=False, separators=(",", ":"))
