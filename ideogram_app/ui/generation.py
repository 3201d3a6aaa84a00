"""Generation as the app runs it: the one request model (`GenerationSettings`) built from the controls
or the API's arguments, its errors shown under the names the user sees, per-session Stop signals,
and the pipeline run with the request's LoRAs (under ZeroGPU on Spaces).

Every rule and default lives in `pipeline/settings.py` and `limits.py`; this module only translates
between widgets and fields.
"""
from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from dataclasses import MISSING, fields
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from ideogram_app.limits import Limits
from ideogram_app.pipeline.preview import Preview
from ideogram_app.pipeline.sampling import PRESETS
from ideogram_app.pipeline.settings import RANDOM_SEED, GenerationSettings, SettingsError

from .loras import sync_loras
from .runs import gpu_busy
from .wiring import check_text, is_out_of_memory
from .zerogpu import gpu_duration, on_gpu

# The field defaults of GenerationSettings, for the controls' initial values and the API's defaults.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(GenerationSettings) if f.default is not MISSING}
PRESET_LABELS = {f"{name.capitalize()} · {preset.steps} steps": name for name, preset in PRESETS.items()}
PRESET_BY_NAME = {name: label for label, name in PRESET_LABELS.items()}


def describe_problems(err: SettingsError, names: Mapping[str, str]) -> str:
    """The settings' problems, each led by what the user calls the field (a control's label, an
    API parameter); a field without a name of its own keeps the settings' name."""
    return "; ".join(f"{names.get(field, field)}: {message}" for field, message in err.problems)


def settings_from_controls(*, preset: str, width, height, seed, randomize: bool, num_images,
                           input_image: str | None, strength, limits: Limits, steps=None,
                           guidance=None) -> GenerationSettings:
    """The Generate panel's values as a request (raises SettingsError). The preset arrives as its
    label; "New random seed each run" means RANDOM_SEED; the strength slider belongs to the img2img
    input and is only passed with an image. `steps` and `guidance` (the Advanced fields) override the
    preset when filled in; empty (None) keeps the preset's step count and guidance schedule."""
    return GenerationSettings(
        width=width, height=height, preset=PRESET_LABELS.get(preset, preset),
        num_inference_steps=steps, cfg_scale=guidance,
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
                    loras: Sequence[tuple[str, float]] = (), preview: Preview | None = None) -> list[Image.Image]:
    """Images for a request the pipeline has validated (`pipe.prepare`), with exactly the LoRAs
    `loras` on (`[(file name, scale), …]` from loras.checked_selection). The shared pipeline is set
    to this request's LoRAs here, inside the GPU slot, because the slot is what keeps another
    user's run from changing them before the image is made (loras.py)."""
    sync_loras(pipe, loras)
    images = pipe.run(request, callback=on_step, stop_event=stop_event, preview=preview,
                      preview_every=preview_every(request.settings.sampler.steps))
    return images if isinstance(images, list) else [images]


run_generation = on_gpu(_run_generation, duration=lambda pipe, request, *args, **kwargs: gpu_duration(request.settings))


PREVIEWS_PER_RUN = 8  # about this many live previews per run, whatever its step count


def preview_every(steps: int) -> int:
    """Steps between two live previews: about PREVIEWS_PER_RUN per run (a preview costs a small
    matrix product and a PNG, so more would only load the page)."""
    return max(1, round(steps / PREVIEWS_PER_RUN))


# Before a decode has been timed, decoding is guessed to take as long as this many denoising steps
# (each step runs two DiTs; the VAE decode is one pass of a smaller network, but at full resolution).
DECODE_GUESS_STEPS = 2.0


class DecodeTimes:
    """Seconds per decoded megapixel, measured after each run, per pipeline (the VAE, its device and
    its memory mode decide the speed, and they belong to the loaded pipeline)."""

    def __init__(self) -> None:
        self._rates: dict[int, float] = {}
        self._lock = threading.Lock()

    def estimate(self, pipe, megapixels: float) -> float | None:
        with self._lock:
            rate = self._rates.get(id(pipe))
        return None if rate is None else rate * megapixels

    def record(self, pipe, megapixels: float, seconds: float) -> None:
        if megapixels > 0 and seconds >= 0:
            with self._lock:
                self._rates[id(pipe)] = seconds / megapixels


@dataclass
class RunClock:
    """Phase labels and the time left of one run, the decode included: the steps' own pace, and a
    decode time that was measured on an earlier run of this pipeline (scaled by pixels) or, before
    the first one, guessed from the step time (DECODE_GUESS_STEPS)."""

    total: int
    megapixels: float  # all images of the run together
    decode_estimate: float | None = None  # seconds, from DecodeTimes
    started: float = 0.0
    first_step_at: float | None = None
    last_step_at: float | None = None

    def start(self) -> str:
        self.started = time.monotonic()
        return "Encoding the text…"

    def step(self, step: int) -> str:
        """The label after denoising step `step` of `total` finished."""
        now = time.monotonic()
        if self.first_step_at is None:
            self.first_step_at = now
        self.last_step_at = now
        per_step = (now - self.started) / step if step == 1 else (now - self.first_step_at) / (step - 1)
        decode = self.decode_estimate if self.decode_estimate is not None else DECODE_GUESS_STEPS * per_step
        if step >= self.total:
            return f"Decoding… about {_seconds(decode)} left"
        left = per_step * (self.total - step) + decode
        return f"Step {step} of {self.total} · about {_seconds(left)} left, decoding included"

    def decode_seconds(self) -> float | None:
        """How long the decode took (call when the images are back)."""
        return None if self.last_step_at is None else time.monotonic() - self.last_step_at


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 90 else f"{value / 60:.0f} min"


@dataclass
class LivePicture:
    version: int = 0
    label: str = ""
    preview: Image.Image | None = None


class LiveRuns:
    """What each session's running generation shows (its phase label and latest preview), written by
    the run's thread and read by the page's timer; `version` tells the reader whether anything changed."""

    def __init__(self) -> None:
        self._runs: dict[str, LivePicture] = {}
        self._lock = threading.Lock()

    def start(self, session: str, label: str) -> None:
        with self._lock:
            self._runs[session] = LivePicture(1, label)

    def update(self, session: str, label: str | None = None, preview: Image.Image | None = None) -> None:
        with self._lock:
            run = self._runs.get(session)
            if run is None:
                return
            run.version += 1
            run.label = label if label is not None else run.label
            run.preview = preview if preview is not None else run.preview

    def read(self, session: str) -> LivePicture | None:
        with self._lock:
            run = self._runs.get(session)
            return None if run is None else LivePicture(run.version, run.label, run.preview)

    def finish(self, session: str) -> None:
        with self._lock:
            self._runs.pop(session, None)


class GenerationFailed(RuntimeError):
    """A validated request that could not run (out of memory); the message says what to change."""


def generate_images(pipe, request, on_step: Callable[[int, int], None] | None = None,
                    stop_event: threading.Event | None = None,
                    loras: Sequence[tuple[str, float]] = (), preview: Preview | None = None) -> list[Image.Image]:
    """`run_generation`, and after running out of memory, the memory handed back before the error
    is reported, so the next request (smaller, or someone else's) can run. While a training run that
    this app started holds the GPU lease (runs.py), generation is refused with the reason instead of
    running out of memory beside it."""
    busy = gpu_busy()
    if busy:
        raise GenerationFailed(busy)
    try:
        return run_generation(pipe, request, on_step=on_step, stop_event=stop_event, loras=loras, preview=preview)
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
