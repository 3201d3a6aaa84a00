"""The one loaded model of an app process, shared by every session (weights are far too big to
load per user). Loading, unloading and generating all run under the app's single GPU concurrency
group, so they queue instead of colliding; the lock here only guards the slot's own fields. Who
may load or unload is decided before the slot is asked (policy.py).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .markup import code, escape

HOW_TO_GET_WEIGHTS = (
    "No model is loaded. Open the **Model** tab, pick a variant (or a local folder) and press **Load model**, "
    "or start the app with `python app.py --model ideogram-ai/ideogram-4-fp8` (or a local folder; "
    "`IDEOGRAM_MODEL` does the same). The weights are gated: accept the Ideogram 4 Non-Commercial licence on "
    "the model page and set `HF_TOKEN`. Composing, templates, previews and the caption API work without a model."
)


class ModelNotLoadedError(RuntimeError):
    """Generation was asked for while no pipeline is loaded; the message says how to load one."""


@dataclass
class LoadedModel:
    pipe: Any
    source: str  # what the loader was given (a folder, a repo id)
    memory: str
    local: bool  # `source` was a folder on this server
    mode: str | None = None  # the speed mode asked for (None: the pipeline's default for its device)
    devices: tuple[str, ...] | None = None  # two devices: CFG-parallel; None: the pipeline's default device


class ModelSlot:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None
        self.last_error: str | None = None

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def require(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is None:
            raise ModelNotLoadedError(HOW_TO_GET_WEIGHTS)
        return loaded

    def load(self, source: str, memory: str = "full", mode: str | None = None,
             devices: tuple[str, ...] | None = None, status: Callable[[str], None] | None = None) -> LoadedModel:
        """Load `source` (local folder/file or hub id) with memory mode `memory`, speed mode `mode` and
        `devices` (see ideogram_app.speed and the pipeline's `from_pretrained`), replacing any model.

        The new pipeline is built while the current one keeps serving, and swapped in only once it
        loaded: a failed load (a typo, a gated repo, a full disk) leaves every user's generation
        working. The price is room for both models during the load; unload first where that does
        not fit. In the compiled speed modes the DiT blocks are compiled here too, before the swap,
        with `status` told what is happening (`Ideogram4Pipeline.warm_up`), so the first image after a
        load does not stall on it.
        """
        from ideogram_app.pipeline.pipeline import Ideogram4Pipeline

        source = (source or "").strip()
        if not source:
            raise ValueError("give a model: a local folder or a repo id such as ideogram-ai/ideogram-4-fp8")
        local = Path(source).expanduser().exists()  # the loader's own rule (pipeline/hub.py)
        options: dict = {"memory": memory, "mode": mode}
        if devices is not None:  # only a second device is news to the loader; one device is its default
            options["devices"] = devices
        try:
            pipe = Ideogram4Pipeline.from_pretrained(source, **options)
            pipe.warm_up(status or (lambda line: None))
        except Exception as err:
            self.last_error = f"{type(err).__name__}: {err}"
            raise
        with self._lock:
            self._loaded = LoadedModel(pipe, source, memory, local, mode, devices)
            self.last_error = None
        _release_memory()
        return self._loaded

    def unload(self) -> None:
        with self._lock:
            self._loaded = None
        _release_memory()

    def token_counter(self) -> Callable[[str], int] | None:
        """The loaded model's exact prompt token count, or None (the UI then shows an estimate)."""
        loaded = self._loaded
        tokenizer = getattr(loaded.pipe, "tokenizer", None) if loaded else None
        return tokenizer.count if tokenizer is not None else None

    def status(self, detail: bool = True) -> str:
        """What is loaded, as Markdown. Without `detail` (for visitors who are not operators) a
        local folder is named without its server path and the last failed load is not described."""
        loaded = self._loaded
        if loaded is None:
            note = f"\n\nLast load failed: {escape(self.last_error)}" if self.last_error and detail else ""
            return "**No model loaded.** Composing and previews work; Generate needs a model." + note
        if loaded.local:
            where = f"local folder {code(loaded.source if detail else Path(loaded.source).name)}"
        else:
            where = code(loaded.source)
        device = getattr(getattr(loaded.pipe, "memory", None), "device", None)
        note = ("" if device is None or device.type != "cpu" else
                " · runs on the **CPU** (no GPU found or `cpu` mode): fine for tiny test models, very slow for "
                "the real one")
        speed = f" · speed mode `{loaded.mode}`" if loaded.mode else ""
        pair = f" · CFG-parallel on `{' + '.join(loaded.devices)}`" if loaded.devices and len(loaded.devices) > 1 else ""
        return f"**Loaded:** {where} · memory mode `{loaded.memory}`{speed}{pair}{note}"


def _release_memory() -> None:
    """Return the memory of a model nobody references any more (host and GPU caches)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
