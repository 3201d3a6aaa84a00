"""What the caption checks report, and the two exceptions `parse` raises.

Every check in the package speaks `Issue`, so the CLI, the UI and the pipeline show the same
codes, paths and messages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Issue:
    """One finding. `path` is a JSON path such as `compositional_deconstruction.elements[3].bbox`
    ("" is the caption itself); `message` says what is wrong and how to fix it."""

    code: str
    path: str
    message: str
    severity: Severity

    def __str__(self) -> str:
        return f"{self.severity} {self.code} at {self.path or '(top level)'}: {self.message}"


class CaptionSyntaxError(ValueError):
    """Text that starts like JSON but does not parse. `line`/`column` are 1-based, so an editor can
    jump to the spot."""

    def __init__(self, message: str, line: int, column: int):
        super().__init__(f"invalid JSON at line {line}, column {column}: {message}")
        self.reason = message
        self.line = line
        self.column = column


class CaptionFormatError(ValueError):
    """Valid JSON that cannot be held by the caption model (wrong types, missing required parts,
    duplicate keys). `issues` lists every such problem with its path."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("; ".join(str(issue) for issue in issues))
