"""Generation as the app runs it: the one request model (`GenerationSettings`) built from the controls
or the API's arguments, its errors shown under the names the user sees, per-session Stop signals,
and the pipeline run with the request's LoRAs (under ZeroGPU on Spaces).

Every rule and default lives in `pipeline/settings.py` and `limits.py`; this module only translates
between widgets and fields.
"""
from __future__ import annotations

import gc
import threading
from dataclasses import MISSING, fields
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from ideogram_app.limits import Limits
from ideogram_app.pipeline.sampling import PRESETS
from ideogram_app.pipeline.settings import RANDOM_SEED, GenerationSettings, SettingsError

from .loras import sync_loras
from .runs import gpu_busy
from .wiring import check_text, is_out_of_memory
from .zerogpu import on_gpu

# The field defaults of GenerationSettings, for the controls' initial values and the API's defaults.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(GenerationSettings) if f.default is not MISSING}
PRESET_LABELS = {f"{name.capitalize()} · {preset.steps} steps": name for name, preset in PRESETS.items()}
PRESET_BY_NAME = {name: label for label, name in PRESET_LABELS.items()}
# Seconds per guided denoising step at 1 MP, with a wide margin over the 0.34 s of DiT time measured
# on an H100 (benchmarks/RESULTS.md); only used to ask ZeroGPU for a slot long enough.
SECONDS_PER_STEP_AT_1MP = 1.2
FIXED_OVERHEAD_S = 20


def describe_problems(err: SettingsError, names: Mapping[str, str]) -> str:
    """The settings' problems, each led by what the user calls the field (a control's label, an
    API parameter); a field without a name of its own keeps the settings' name."""
    return "; ".join(f"{names.get(field, field)}: {message}" for field, message in err.problems)


def settings_from_controls(*, preset: str, width, height, seed, randomize: bool, num_images,
                           input_image: str | None, strength, limits: Limits) -> GenerationSettings:
    """The Generate panel's values as a request (raises SettingsError). The preset arrives as its
    label; "New random seed each run" means RANDOM_SEED; the strength slider belongs to the img2img
    input and is only passed with an image."""
    return GenerationSettings(
        width=width, height=height, preset=PRESET_LABELS.get(preset, preset),
        seed=RANDOM_SEED if randomize else seed, num_images=num_images,
        input_image=input_image or None, denoising_strength=strength if input_image else None, limits=limits,
    )


JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list",
              dict: "an object", type(None): "null"}


def checked_caption(caption: Any, limits: Limits, name: str = "caption") -> str:
    """The caption text of a request, checked before it is parsed or tokenized: a string (JSON
    text or a plain-text prompt), not blank, within `limits.max_caption_chars`, made of characters
    only (a lone UTF-16 surrogate cannot be tokenized or stored). Raises ValueError naming `name`."""
    if not isinstance(caption, str):
        raise ValueError(f"{name} must be a string (JSON text or a plain-text prompt), got "
                         f"{JSON_TYPES.get(type(caption), type(caption).__name__)}")
    limits.check_caption_chars(caption)
    check_text(name, caption, limits)
    if not caption.strip():
        raise ValueError(f"{name} is empty; pass a JSON caption or a plain-text prompt")
    return caption


def checked_size(width, height, limits: Limits) -> GenerationSettings:
    """Just a size, checked by the request model (everything else at its default): raises
    SettingsError for a size that cannot run; `.warnings` holds the notes for an unusual one."""
    return GenerationSettings(width=width, height=height, limits=limits)


def gpu_seconds(settings: GenerationSettings) -> int:
    """Duration to request from ZeroGPU for one run of `settings`."""
    megapixels = settings.width * settings.height / 1024**2
    return int(FIXED_OVERHEAD_S + settings.num_images * settings.sampler.steps * SECONDS_PER_STEP_AT_1MP
               * max(megapixels, 0.25))


class StopSignals:
    """One threading.Event per browser session, so Stop ends only that user's run."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            event = self._events[session] = threading.Event()
        return event

    def stop(self, session: str) -> bool:
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, session: str) -> None:
        with self._lock:
            self._events.pop(session, None)


def _run_generation(pipe, request, on_step: Callable[[int, int], None] | None = None,
                    stop_event: threading.Event | None = None,
                    loras: Sequence[tuple[str, float]] = ()) -> list[Image.Image]:
    """Images for a request the pipeline has validated (`pipe.prepare`), with exactly the LoRAs
    `loras` on (`[(file name, scale), …]` from loras.checked_selection). The shared pipeline is set
    to this request's LoRAs here, inside the GPU slot, because the slot is what keeps another
    user's run from changing them before the image is made (loras.py)."""
    sync_loras(pipe, loras)
    images = pipe.run(request, callback=on_step, stop_event=stop_event)
    return images if isinstance(images, list) else [images]


run_generation = on_gpu(_run_generation, duration=lambda pipe, request, *args, **kwargs: gpu_seconds(request.settings))


class GenerationFailed(RuntimeError):
    """A validated request that could not run (out of memory); the message says what to change."""


def generate_images(pipe, request, on_step: Callable[[int, int], None] | None = None,
                    stop_event: threading.Event | None = None,
                    loras: Sequence[tuple[str, float]] = ()) -> list[Image.Image]:
    """`run_generation`, and after running out of memory, the memory handed back before the error
    is reported, so the next request (smaller, or someone else's) can run. While a training run that
    this app started holds the GPU lease (runs.py), generation is refused with the reason instead of
    running out of memory beside it."""
    busy = gpu_busy()
    if busy:
        raise GenerationFailed(busy)
    try:
        return run_generation(pipe, request, on_step=on_step, stop_event=stop_event, loras=loras)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        gc.collect()
        _empty_gpu_cache()
        s = request.settings
        raise GenerationFailed(f"{s.num_images} image(s) at {s.width}×{s.height} ran out of memory ({type(err).__name__}); "
                               "try a smaller size or fewer images. The app keeps serving.") from None


def _empty_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
