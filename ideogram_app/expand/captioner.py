"""`expand` (a plain-text idea -> a caption with boxes) and `describe` (an image -> a caption with
boxes): one call each, for the UI, the CLI and scripts (docs/expand.md).

Both ask a backend for an answer and pass it through `repair.finish` (parse -> repairs -> to_json ->
verify). When errors remain, the model is asked once more with the verifier's messages; when they
still remain, `CaptionRejected` carries them to the user.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from PIL import Image

from ideogram_app.caption import Caption, CaptionFormatError, CaptionSyntaxError, PlainText, parse, verify
from ideogram_app.caption.rules import SURROGATE, show
from ideogram_app.limits import Limits

from .bounds import CaptionBounds
from .images import DEFAULT_MAX_SIDE, image_data_url
from .openai_compat import OpenAIBackend
from .prompts import describe_messages, expand_messages, retry_messages
from .repair import ELEMENTS, finish, quoted_texts
from .result import BackendError, CaptionRejected, Expansion, InputError

ENV_BACKEND = "IDEOGRAM_EXPAND_BACKEND"  # "openai" (default) or "local"
ENV_URL = "IDEOGRAM_EXPAND_URL"
ENV_MODEL = "IDEOGRAM_EXPAND_MODEL"  # the model name, or the folder for the local backend
ENV_KEY = "IDEOGRAM_EXPAND_KEY"


class Backend(Protocol):
    name: str
    vision: bool  # whether `complete` accepts image parts

    def complete(self, messages: list[dict], bounds: CaptionBounds) -> str:
        """The model's answer to an OpenAI-style message list, as text."""


def make_backend(kind: str | None = None, *, url: str | None = None, model: str | None = None,
                 key: str | None = None, **options) -> Backend:
    """A backend from arguments, falling back to the environment for each one left out. `options`
    go to the backend's constructor (`timeout`, `retries`, `temperature`... for "openai";
    `device`, `max_new_tokens`, `seed`... for "local"). Keep the result: the local one holds the
    model in memory."""
    kind = kind or os.environ.get(ENV_BACKEND) or "openai"
    model = model or os.environ.get(ENV_MODEL)
    if kind == "openai":
        url = url or os.environ.get(ENV_URL)
        if not url:
            raise BackendError("config", f"no expansion server configured: pass --url or set {ENV_URL} to an "
                               "OpenAI-compatible API root, e.g. http://localhost:11434/v1 for Ollama")
        return OpenAIBackend(url, model or "", key or os.environ.get(ENV_KEY), **options)
    if kind == "local":
        if not model:
            raise BackendError("config", f"the local backend needs a model folder: pass --model or set {ENV_MODEL}")
        from .local import LocalBackend  # torch and transformers load only for this backend

        return LocalBackend(model, **options)
    raise BackendError("config", f"unknown backend {show(kind)}; use 'openai' or 'local'")


def _backend(backend: Backend | str | None) -> Backend:
    if backend is None or isinstance(backend, str):
        return make_backend(backend)
    if not callable(getattr(backend, "complete", None)):
        raise TypeError(f"backend must be 'openai', 'local' or an object with complete(), got {type(backend).__name__}")
    return backend


def expand(text: str, width: int, height: int, keep: Caption | dict | str | None = None,
           backend: Backend | str | None = None, *, bounds: CaptionBounds | None = None) -> Expansion:
    """A complete caption for the idea `text` at `width` x `height` pixels.

    Every string quoted in `text` ("..." or “...”) is the exact text of a text element. `keep` is
    the user's current caption: its elements come back unchanged (text and box included) and its
    description, style and background are offered to the model to improve on. Raises `InputError`
    for an unusable request, `BackendError` when no answer came, `CaptionRejected` when the answer
    is still wrong after one retry."""
    idea = _check_idea(text)
    _check_size(width, height)
    kept, current = _kept(keep)
    quotes = quoted_texts(idea)
    for quote in quotes:
        _check_quote(quote)
    messages = expand_messages(idea, width, height, quotes, kept, current)
    return _ask(_backend(backend), messages, bounds or CaptionBounds(), quotes, kept)


def describe(image: str | Path | bytes | Image.Image, backend: Backend | str | None = None, *,
             max_side: int = DEFAULT_MAX_SIDE, bounds: CaptionBounds | None = None) -> Expansion:
    """A caption with boxes for `image` (a path, bytes or a PIL image), from a vision model. The
    image is sent downscaled to `max_side` pixels on its longer side."""
    chosen = _backend(backend)
    if not getattr(chosen, "vision", False):
        raise BackendError("config", f"the {getattr(chosen, 'name', 'chosen')} backend reads text only; describing an "
                           "image needs a vision model behind the OpenAI-compatible backend (--backend openai)")
    url, width, height = image_data_url(image, max_side)
    return _ask(chosen, describe_messages(url, width, height), bounds or CaptionBounds(), [], [])


def _ask(backend: Backend, messages: list[dict], bounds: CaptionBounds, quotes: list[str],
         kept: list[dict]) -> Expansion:
    answer = backend.complete(messages, bounds)
    result = finish(answer, quotes, kept)
    if not result.errors:
        return Expansion(result.caption, result.json, tuple(result.repairs), tuple(result.warnings))
    first_errors = tuple(result.errors)
    answer = backend.complete(retry_messages(messages, answer, result.errors), bounds)
    result = finish(answer, quotes, kept)
    if result.errors:
        raise CaptionRejected(result.errors, answer, result.repairs)
    return Expansion(result.caption, result.json, tuple(result.repairs), tuple(result.warnings), attempts=2,
                     retried_for=first_errors)


def _check_idea(text: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"the idea must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError("the idea is empty; describe the image you want in a few words")
    limit = Limits().max_caption_chars
    if len(text) > limit:
        raise InputError(f"the idea is {len(text):,} characters long; at most {limit:,} are accepted")
    if SURROGATE.search(text):
        raise InputError("the idea contains a lone UTF-16 surrogate, which is not a character; delete it")
    return text.strip()


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive whole number of pixels, got {value!r}")


def _kept(keep: Caption | dict | str | None) -> tuple[list[dict], dict | None]:
    """(the kept elements in canonical form, the rest of the caption as context or None)."""
    if keep is None:
        return [], None
    try:
        caption = parse(keep)
    except (CaptionSyntaxError, CaptionFormatError, TypeError) as err:
        raise InputError(f"the layout to keep is not a caption: {err}") from None
    if isinstance(caption, PlainText):
        raise InputError("the layout to keep is plain text, not a JSON caption")
    errors = [i for i in verify(caption) if i.severity == "error" and i.path.startswith(ELEMENTS)]
    if errors:
        found = "; ".join(str(i) for i in errors)
        raise InputError(f"the layout to keep has errors in its elements, which are kept unchanged; fix them "
                         f"first: {found}")
    context = caption.to_dict()
    context["compositional_deconstruction"].pop("elements")
    return [element.to_dict() for element in caption.elements], context


def _check_quote(quote: str) -> None:
    probe = {"compositional_deconstruction": {"background": "-", "elements": [
        {"type": "text", "text": quote, "desc": "-"}]}}
    errors = [i for i in verify(probe) if i.severity == "error" and i.path.endswith(".text")]
    if errors:
        raise InputError(f"the quoted text {show(quote)} cannot be drawn as it is: {errors[0].message}")
