"""Prompt -> the exact string the text encoder sees.

Structured captions (dict, `Caption`, JSON text) are verified with the caption core and re-serialised
canonically (compact, canonical key order, literal non-ASCII: the training format). Every verifier
error is reported in ONE exception; warnings are logged (`to_json` already repairs what they flag).
Plain prose goes through unchanged, as the official pipeline does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from ideogram_app.caption import Caption, Issue, parse, to_json, verify

log = logging.getLogger(__name__)


class InvalidCaptionError(ValueError):
    """A structured caption with verifier errors; `issues` holds every one of them."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        lines = "\n".join(f"  - {issue.path or '(top level)'}: {issue.message} [{issue.code}]" for issue in issues)
        super().__init__(f"the caption has {len(issues)} error(s); fix them and try again:\n{lines}")


@dataclass(frozen=True)
class PreparedPrompt:
    text: str
    kind: Literal["caption", "text"]
    warnings: list[Issue] = field(default_factory=list)


def prepare_prompt(prompt: str | dict | Caption) -> PreparedPrompt:
    """Validate and canonicalise a prompt. Raises CaptionSyntaxError (with line/column) for broken
    JSON text, InvalidCaptionError for captions that break the schema, TypeError for other types."""
    if not isinstance(prompt, (str, dict, Caption)):
        raise TypeError(f"prompt must be a str, dict or Caption, got {type(prompt).__name__}")
    issues = verify(prompt)
    errors = [issue for issue in issues if issue.severity == "error"]
    if isinstance(prompt, str):
        codes = {issue.code for issue in issues}
        if "plain_text" in codes:
            if errors:  # prose the tokenizer cannot take (e.g. a lone surrogate)
                raise InvalidCaptionError(errors)
            return PreparedPrompt(prompt, "text")
        if "json_syntax" in codes:
            parse(prompt)  # raises the CaptionSyntaxError that carries line and column
    if errors:
        raise InvalidCaptionError(errors)
    warnings = [issue for issue in issues if issue.severity == "warning"]
    for issue in warnings:
        log.warning("caption %s", issue)
    return PreparedPrompt(to_json(prompt), "caption", warnings)
