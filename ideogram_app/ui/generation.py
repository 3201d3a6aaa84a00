"""Generation as the app runs it: settings checked before the GPU is touched, per-session Stop
signals, results saved as PNGs that carry their caption and settings (so they re-open in the editor).
"""
from __future__ import annotations

import os
import random
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from ideogram_app.model.prompt_tokenizer import PromptTooLongError, check_token_count
from ideogram_app.pipeline.metadata import read_image_metadata, save_png
from ideogram_app.pipeline.prompt import prepare_prompt
from ideogram_app.pipeline.sampling import PRESETS, check_denoising_strength
from ideogram_app.pipeline.sizes import check_size

from .model_slot import ModelSlot
from .zerogpu import on_gpu

MAX_IMAGES = 4
SEED_MAX = 2**31 - 1
PRESET_LABELS = {"Quality · 48 steps": "quality", "Default · 20 steps": "default", "Turbo · 12 steps": "turbo"}
# Upper bound of H100/H200 seconds per denoising step at 1 MP with both transformers (docs/app.md,
# "Hugging Face Spaces", has the measurements); only used to ask ZeroGPU for a slot long enough.
SECONDS_PER_STEP_AT_1MP = 1.2
FIXED_OVERHEAD_S = 20


class SettingsError(ValueError):
    """Generation settings that cannot run; the message names the field and the fix."""


@dataclass(frozen=True)
class GenerationSettings:
    preset: str = "default"
    width: int = 1024
    height: int = 1024
    seed: int = 0
    num_images: int = 1
    input_image: str | None = None
    strength: float = 1.0


def output_dir() -> Path:
    path = Path(os.environ.get("IDEOGRAM_OUTPUT_DIR", "outputs")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_seed(seed: int | float | None, randomize: bool) -> int:
    if randomize or seed is None or seed < 0:
        return random.randint(0, SEED_MAX)
    return int(seed)


def check_settings(preset: str, width, height, seed, num_images, input_image: str | None,
                   strength) -> tuple[GenerationSettings, list[str]]:
    """-> (settings, warnings); SettingsError naming every unusable field."""
    preset = PRESET_LABELS.get(preset, preset)
    if preset not in PRESETS:
        raise SettingsError(f"preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    problems = []
    ints = {}
    for name, value in (("width", width), ("height", height), ("seed", seed), ("num_images", num_images)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name} must be a whole number, got {value!r}")
        ints[name] = value
    if problems:
        raise SettingsError("; ".join(problems))
    try:
        warnings = check_size(ints["width"], ints["height"])
    except ValueError as err:
        raise SettingsError(str(err)) from None
    if not 1 <= ints["num_images"] <= MAX_IMAGES:
        raise SettingsError(f"num_images is {ints['num_images']}; choose 1 to {MAX_IMAGES}")
    if not 0 <= ints["seed"] <= SEED_MAX:
        raise SettingsError(f"seed {ints['seed']} is outside 0..{SEED_MAX}")
    strength = float(strength if input_image else 1.0)
    try:
        check_denoising_strength(strength)
    except ValueError:
        raise SettingsError(f"img2img strength {strength} is outside (0, 1]; 1.0 ignores the input image") from None
    settings = GenerationSettings(preset, ints["width"], ints["height"], ints["seed"], ints["num_images"],
                                  input_image or None, strength)
    return settings, warnings


def check_prompt(prompt: str, count_tokens: Callable[[str], int] | None) -> str:
    """The exact model string for `prompt`, or an error (invalid caption, too many tokens) raised
    before any heavy work; raises the pipeline's InvalidCaptionError / CaptionSyntaxError."""
    prepared = prepare_prompt(prompt)
    if count_tokens is not None:
        try:
            check_token_count(count_tokens(prepared.text))
        except PromptTooLongError as err:
            raise SettingsError(f"the prompt is {err.token_count} tokens long; the model reads at most {err.limit}. "
                                "Shorten descriptions or remove elements.") from None
    return prepared.text


def gpu_seconds(settings: GenerationSettings) -> int:
    """Duration to request from ZeroGPU for one run of `settings`."""
    steps = PRESETS[settings.preset].steps
    megapixels = settings.width * settings.height / 1024**2
    return int(FIXED_OVERHEAD_S + settings.num_images * steps * SECONDS_PER_STEP_AT_1MP * max(megapixels, 0.25))


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


def _run_generation(slot: ModelSlot, prompt: str, settings: GenerationSettings,
                   on_step: Callable[[int, int], None] | None = None,
                   stop_event: threading.Event | None = None) -> list[Image.Image]:
    """Images from the loaded pipeline (ModelNotLoadedError when there is none)."""
    pipe = slot.require().pipe
    init = Image.open(settings.input_image).convert("RGB") if settings.input_image else None
    images = pipe(prompt, height=settings.height, width=settings.width, seed=settings.seed,
                  preset=settings.preset, num_images=settings.num_images, input_image=init,
                  denoising_strength=settings.strength, callback=on_step, stop_event=stop_event)
    return images if isinstance(images, list) else [images]


run_generation = on_gpu(_run_generation, duration=lambda slot, prompt, settings, *args, **kwargs: gpu_seconds(settings))


def save_results(images: list[Image.Image], directory: Path | None = None) -> list[dict]:
    """Write each image (with the metadata the pipeline attached) to a fresh, unguessable name;
    -> result records `{"path", "prompt", "settings"}` (the record is the PNG's own metadata)."""
    directory = directory or output_dir()
    results = []
    for image in images:
        path = save_png(image, directory / f"ideogram-{uuid.uuid4().hex[:12]}.png")
        record = read_image_metadata(image)
        results.append({"path": str(path), "prompt": record["prompt"], "settings": record["settings"]})
    return results
