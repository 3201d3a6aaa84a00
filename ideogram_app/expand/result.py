"""What `expand` / `describe` give back, and how they fail. A UI shows `Expansion.repairs` and
`.warnings` next to the new layout, and an error's message (plus `.issues` for a rejected caption)
instead of it; nothing the model got wrong is dropped without a trace."""
from __future__ import annotations

from dataclasses import dataclass

from ideogram_app.caption import Caption, Issue


@dataclass(frozen=True)
class Repair:
    """One mechanical change made to the model's answer, e.g. `bbox_swapped` at
    `compositional_deconstruction.elements[2].bbox`."""

    code: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.code} at {self.path or '(top level)'}: {self.message}"


@dataclass(frozen=True)
class Expansion:
    """A caption that passed `parse` -> `to_json` -> `verify` with no errors.

    `json` is the canonical text (what the model sees); `repairs` what was changed to get there;
    `warnings` the verifier's remaining warnings (normally none); `attempts` is 2 when the first
    answer had errors and the model was asked once more, with those errors in `retried_for`."""

    caption: Caption
    json: str
    repairs: tuple[Repair, ...] = ()
    warnings: tuple[Issue, ...] = ()
    attempts: int = 1
    retried_for: tuple[Issue, ...] = ()


class ExpandError(Exception):
    """Base of every failure of `expand` / `describe`; the message is meant for the user."""


class InputError(ExpandError, ValueError):
    """The request itself is unusable: an empty idea, a bad size, an unreadable image, a kept layout
    or quoted text that is not a valid caption part."""


class BackendError(ExpandError):
    """No usable answer came back. `kind` is one of: `config` (missing URL, model or folder),
    `unreachable`, `timeout`, `http` (an error status), `refusal` (the model declined or a content
    filter stopped it), `truncated` (cut off at the token limit), `protocol` (not a chat completion)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class CaptionRejected(ExpandError):
    """The model answered twice (the second time with the verifier's messages) and the caption still
    has errors. `issues` are those errors, `raw` the last answer as received, `repairs` what was
    already changed in it."""

    def __init__(self, issues: list[Issue], raw: str, repairs: list[Repair]):
        self.issues, self.raw, self.repairs = list(issues), raw, list(repairs)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"the model's caption still has {len(self.issues)} error(s) after one retry with the "
                         f"verifier's messages:\n{lines}")
