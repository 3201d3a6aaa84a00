"""Per-browser-session editor state, held in `gr.State` (so two users never share a canvas).

The server's copy dies with the process (or the session's expiry); the browser keeps its own copy
of the caption (see `ComposeTab`, `gr.BrowserState`), which the page-load event restores. The
app's initial `gr.State` value is a *placeholder*: page load replaces it, so an event that receives
a placeholder comes from a page whose session this server process does not know, and is refused
with a message instead of editing or generating from an empty caption.

The caption lives here as a plain dict in canonical shape (`Caption.to_dict()`), because while a
user edits it may be temporarily invalid (an empty text element, a palette being built) and the
verifier, not the editor, decides what is wrong. Undo/redo keep whole snapshots (the caption and,
in plain-text mode, the plain text): captions are a few kB, and snapshots make every edit (canvas,
inspector, JSON paste, an expansion of a plain-text idea) undoable the same way.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ideogram_app.pipeline.settings import GenerationSettings

UNDO_LIMIT = 100


@dataclass(frozen=True)
class Snapshot:
    """One step of the history: the caption, and the plain text when the state was in plain-text
    mode (so undoing an edit that left plain-text mode brings the typed text back)."""

    caption: dict
    plain_text: str | None = None


def empty_caption() -> dict:
    return {"compositional_deconstruction": {"background": "", "elements": []}}


@dataclass
class EditorState:
    caption: dict = field(default_factory=empty_caption)
    selected: int | None = None
    width: int = GenerationSettings.width  # the canvas has the aspect of the size Generate will use
    height: int = GenerationSettings.height
    background_image: str | None = None
    background_opacity: float = 0.5
    plain_text: str | None = None
    undo_stack: list[Snapshot] = field(default_factory=list)
    redo_stack: list[Snapshot] = field(default_factory=list)
    last_edit: str | None = None
    placeholder: bool = False  # True only in the app's initial gr.State value (see the module docstring)

    @property
    def elements(self) -> list[dict]:
        return self.caption["compositional_deconstruction"]["elements"]

    def selected_element(self) -> dict | None:
        if self.selected is None or not 0 <= self.selected < len(self.elements):
            return None
        return self.elements[self.selected]


def edited(state: EditorState, field_key: str | None = None) -> EditorState:
    """A copy of `state` ready to be changed, with the current caption pushed on the undo stack.
    Consecutive edits of the same field (`field_key`, e.g. typing in one textbox) share one undo
    step, so undo does not walk back keystroke by keystroke."""
    new = copy.deepcopy(state)
    if field_key is None or field_key != state.last_edit:
        new.undo_stack = (new.undo_stack + [_snapshot(state)])[-UNDO_LIMIT:]
    new.redo_stack = []
    new.plain_text = None
    new.last_edit = field_key
    return new


def _snapshot(state: EditorState) -> Snapshot:
    return Snapshot(copy.deepcopy(state.caption), state.plain_text)


def _restored(state: EditorState, snapshot: Snapshot) -> None:
    state.caption = copy.deepcopy(snapshot.caption)
    state.plain_text = snapshot.plain_text
    state.last_edit = None
    state.selected = clamp_selection(state.selected, len(state.elements))


def undo(state: EditorState) -> EditorState:
    if not state.undo_stack:
        return state
    new = copy.deepcopy(state)
    new.redo_stack.append(_snapshot(new))
    _restored(new, new.undo_stack.pop())
    return new


def redo(state: EditorState) -> EditorState:
    if not state.redo_stack:
        return state
    new = copy.deepcopy(state)
    new.undo_stack.append(_snapshot(new))
    _restored(new, new.redo_stack.pop())
    return new


def clamp_selection(selected: int | None, count: int) -> int | None:
    if selected is None or count == 0:
        return None
    return min(max(selected, 0), count - 1)
