"""Prompt expansion in the app: the process's one expansion backend and what users are told about it.

The backend is a server-wide setting, like the model: it starts from the environment
(`IDEOGRAM_EXPAND_BACKEND`, `_URL`, `_MODEL`, `_KEY`, docs/expand.md) and only an operator may
change it (the Model tab asks policy.py), because it points the server at a URL or at a folder on
its disk, and may spend the operator's API key. Everyone's Expand button and `/expand` use it.

`Expander` keeps one backend object and makes it on first use: the local one holds its model in
memory, the remote one remembers which structured-output mode its server accepts. The local
backend is not thread-safe and uses the GPU, so every caller runs `expand` in the app's GPU
concurrency group (one at a time, behind generations). The remote one is given a shorter timeout
and fewer retries than the package's defaults, because its call holds that group too.

Nothing here imports Gradio, so the settings and messages are testable on their own.
"""
from __future__ import annotations

import os
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

from ideogram_app.caption import Caption
from ideogram_app.expand import Backend, BackendError, ExpandError, Expansion, expand, make_backend
from ideogram_app.expand.captioner import ENV_BACKEND, ENV_KEY, ENV_MODEL, ENV_URL

from .wiring import hide_paths

KINDS = ("openai", "local")
KIND_LABELS = {"openai": "OpenAI-compatible server", "local": "local causal LM folder"}
SERVER_TIMEOUT_S = 60.0  # per attempt; the call holds the GPU group, so less than the package's 120 s
SERVER_RETRIES = 1
# Expansions by visitors and API clients, together, per minute: each one may spend the operator's API
# key (or GPU time for a local model), and anyone who can reach the app can ask. Operators are not metered.
VISITOR_EXPANSIONS_PER_MINUTE = 30
NOTE_ITEMS = 3  # repairs and warnings listed by name in the note; the rest are counted
# Repairs that only change how the JSON is written (to_json does them for any caption): not noted.
LAYOUT_NEUTRAL = frozenset({"not_compact", "key_order", "unicode_escape", "color_case", "double_encoded"})
NOT_SET_UP = ("Prompt expansion is not set up on this server: an operator sets a language model in the Model "
              "tab (Prompt expansion), or starts the app with IDEOGRAM_EXPAND_URL and IDEOGRAM_EXPAND_MODEL "
              "(docs/expand.md).")


@dataclass(frozen=True)
class ExpandSettings:
    """Which language model writes captions. `model` is the model name for a server, the folder for
    the local backend. `key` is never shown (repr included)."""

    kind: str = "openai"
    url: str = ""
    model: str = ""
    key: str | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> ExpandSettings:
        return cls(kind=environ.get(ENV_BACKEND) or "openai", url=environ.get(ENV_URL) or "",
                   model=environ.get(ENV_MODEL) or "", key=environ.get(ENV_KEY) or None)

    @property
    def configured(self) -> bool:
        return bool(self.model) and (self.kind == "local" or bool(self.url))

    def describe(self, detail: bool) -> str:
        """The settings in one plain-text sentence. Without `detail` (visitors), the server's URL and
        the local folder's path are left out; the key is never named beyond whether one is set."""
        if not self.configured:
            return "Not set up: the Expand button and /expand answer with how to set it up."
        if self.kind == "local":
            where = self.model if detail else Path(self.model).name
            return f"{KIND_LABELS['local']} {where}, decoded under the caption grammar."
        where = f" at {self.url}" if detail else ""
        key = (", an API key is set" if self.key else ", no API key") if detail else ""
        return f"{KIND_LABELS['openai']}{where}, model {self.model}{key}."


class Expander:
    """The process's expansion settings and backend. `configure` swaps settings (checked first);
    `expand` runs one expansion with the backend, made on first use."""

    def __init__(self, settings: ExpandSettings | None = None, per_minute: int = VISITOR_EXPANSIONS_PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._settings = settings if settings is not None else ExpandSettings.from_environment()
        self._backend: Backend | None = None
        self._per_minute = per_minute
        self._clock = clock
        self._metered: deque[float] = deque()  # start times of the metered expansions of the last minute

    @property
    def settings(self) -> ExpandSettings:
        return self._settings

    def configure(self, kind: str, url: str, model: str, key: str | None = None) -> ExpandSettings:
        """New settings from an operator's form. `key` None or "" keeps the current key (the form never
        shows it, so an empty field means "unchanged"; `forget_key` removes it). A local folder must
        already be checked against the model-source allow-list by the caller (policy.py). Raises
        BackendError("config") naming the field that is wrong; the old settings stay then."""
        kind = (kind or "").strip()
        if kind not in KINDS:
            raise BackendError("config", f"Backend must be one of {', '.join(KINDS)}, got {kind!r}")
        url, model = (url or "").strip(), (model or "").strip()
        if not model:
            raise BackendError("config", "Model: give the model name (for a server) or the model folder (local)")
        if kind == "openai":
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise BackendError("config", f"URL: the server's API root must start with http:// or https://, "
                                   f"e.g. http://localhost:11434/v1; got {url!r}")
        elif not (Path(model) / "config.json").is_file():
            raise BackendError("config", f"Model: {Path(model).name} is not a Hugging Face causal-LM folder (it has "
                               "no config.json)")
        current = self._settings
        settings = ExpandSettings(kind=kind, url=url if kind == "openai" else current.url, model=model,
                                  key=key.strip() if key and key.strip() else current.key)
        with self._lock:
            self._settings, self._backend = settings, None  # a local model is loaded on first use
        return settings

    def forget_key(self) -> None:
        """Drop the API key (the next call goes without one)."""
        with self._lock:
            self._settings, self._backend = replace(self._settings, key=None), None

    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                settings = self._settings
                if not settings.configured:
                    raise BackendError("config", NOT_SET_UP)
                if settings.kind == "openai":
                    self._backend = make_backend("openai", url=settings.url, model=settings.model, key=settings.key,
                                                 timeout=SERVER_TIMEOUT_S, retries=SERVER_RETRIES)
                else:
                    self._backend = make_backend("local", model=settings.model)
            return self._backend

    def expand(self, idea: str, width: int, height: int, keep: Caption | dict | str | None = None,
               metered: bool = True) -> Expansion:
        """`ideogram_app.expand.expand` with this process's backend. Call it in the GPU group.
        `metered` calls (visitors, API clients) share VISITOR_EXPANSIONS_PER_MINUTE; over it the call
        is refused before the backend is asked."""
        if metered:
            self._take_metered_slot()
        return expand(idea, width, height, keep=keep, backend=self.backend())

    def _take_metered_slot(self) -> None:
        now = self._clock()
        with self._lock:
            while self._metered and now - self._metered[0] >= 60.0:
                self._metered.popleft()
            if len(self._metered) >= self._per_minute:
                wait = 60.0 - (now - self._metered[0])
                raise ExpandError(f"prompt expansion is busy: this server runs at most {self._per_minute} expansions "
                                  f"a minute for visitors; try again in {max(1, round(wait))} s")
            self._metered.append(now)

    def message(self, err: ExpandError, detail: bool) -> str:
        """`err`'s message as a user is shown it (plain text). Without `detail` (visitors, API
        clients) the configured server URL and server paths are left out."""
        text = str(err)
        if not detail:
            urls = [getattr(self._backend, "url", None), self._settings.url.rstrip("/")]
            for url in filter(None, urls):  # the full endpoint first, then the API root it starts with
                text = text.replace(url, "the expansion server")
            text = hide_paths(text)
        return text


def expansion_note(result: Expansion) -> str:
    """A short plain-text note on what the model's answer needed: its repairs (those that change the
    caption, not only its formatting) and warnings, a few named."""
    parts = [f"{len(result.caption.elements)} element(s)"]
    if result.attempts > 1:
        parts.append(f"answered twice (the first answer had {len(result.retried_for)} error(s))")
    repairs = [r for r in result.repairs if r.code not in LAYOUT_NEUTRAL]
    for what, items in (("repair", [f"{r.code} at {_short(r.path)}" for r in repairs]),
                        ("warning", [f"{w.code} at {_short(w.path)}" for w in result.warnings])):
        if items:
            listed = "; ".join(items[:NOTE_ITEMS]) + (f"; {len(items) - NOTE_ITEMS} more" if len(items) > NOTE_ITEMS
                                                      else "")
            parts.append(f"{len(items)} {what}(s): {listed}")
    return "Expanded: " + ", ".join(parts) + ". Undo restores the previous layout."


def _short(path: str) -> str:
    return path.removeprefix("compositional_deconstruction.") or "(top level)"
