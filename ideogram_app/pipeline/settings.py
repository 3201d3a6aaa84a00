"""The one request model: every generation setting, its default and every rule about it.

`GenerationSettings(...)` checks all of its fields when it is built, before any model is loaded or
run, and reports every problem at once, each tied to its field. The Python API, the CLI, the app
and its HTTP API all build one (so defaults and messages are the same everywhere) and only show its
errors; nothing else re-implements a rule. What needs a model (the caption's token count) or the
image's bytes (decoding an img2img input) is checked right after, by the pipeline.

How the sampler settings combine (docs/pipeline.md, "How preset, steps and guidance combine"): every explicit value
wins over the preset. Steps: `num_inference_steps`, else the length of `guidance_schedule`, else the
preset's. Guidance: `guidance_schedule` (one entry per step), else a constant `cfg_scale`, else the
preset's schedule fitted to the step count by `fit_guidance`. mu / std: explicit, else the preset's.
"""
from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from ideogram_app.limits import DEFAULT_LIMITS, LimitError, Limits
from ideogram_app.pipeline.region import checked_region
from ideogram_app.pipeline.sampling import PRESETS, SamplerSettings, fit_guidance, schedule
from ideogram_app.pipeline.sizes import SizeError, check_size

IMG2IMG_STRENGTH = 0.7  # denoising_strength when an input image comes without one
RANDOM_SEED = -1  # the one spelling of "pick a seed for me" besides None
SEED_MAX = 2**32 - 1  # seeds are 32-bit everywhere, so a browser's number field never rounds one


class SettingsError(ValueError):
    """Settings that cannot run. `problems` pairs each offending field with its message, so the CLI can
    name its flag and the app its control."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


class _Problem(ValueError):
    """A rule's failure tied to the field it is about (which may differ from the field being checked:
    a guidance schedule that does not fit the step count is about the schedule)."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(message)


def _whole_number(name: str, value: Any) -> int:
    """JSON clients send 1024.0 for 1024: integral floats are accepted, anything else is named."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(name, f"{name} must be a whole number, got {value!r}")
    return value


def _real_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Problem(name, f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GenerationSettings:
    """One generation request, validated on construction (raises SettingsError).

    `input_image` is the img2img start image (a PIL image or a file path); it is decoded later under
    the limits (pipeline/images.py); `denoising_strength` defaults to 1.0 (pure text-to-image) without
    one and to IMG2IMG_STRENGTH with one. `edit_region` ([y_min, x_min, y_max, x_max] on 0-1000, with an
    `input_image`) regenerates only that box of the input image and keeps the rest. Randomness: `seed` None or -1 picks a random seed now, and image i
    of a batch uses seed + i.
    """

    width: int = 1024
    height: int = 1024
    preset: str = "quality"
    num_inference_steps: int | None = None
    cfg_scale: float | None = None
    guidance_schedule: tuple[float, ...] | None = None
    mu: float | None = None
    std: float | None = None
    seed: int | None = None
    num_images: int = 1
    denoising_strength: float | None = None
    input_image: Any = None
    edit_region: tuple[int, int, int, int] | None = None
    limits: Limits = field(default=DEFAULT_LIMITS, repr=False, compare=False)
    sampler: SamplerSettings = field(init=False, repr=False, compare=False)
    warnings: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []

        def check(name: str, rule, *args):
            try:
                return rule(*args)
            except ValueError as err:
                problems.append((getattr(err, "field", name), str(err)))
                return None

        self._set(width=check("width", _whole_number, "width", self.width),
                  height=check("height", _whole_number, "height", self.height))
        notes: list[str] = []
        if self.width is not None and self.height is not None:
            try:
                self.limits.check_size(self.width, self.height)
                notes = check_size(self.width, self.height)
            except (LimitError, SizeError) as err:
                problems.append(("size", str(err)))
        self._set(num_images=check("num_images", _whole_number, "num_images", self.num_images))
        if self.num_images is not None:
            check("num_images", self.limits.check_images, self.num_images)
        self._set(seed=check("seed", self._checked_seed))
        self._set(denoising_strength=check("denoising_strength", self._checked_strength))
        notes += self._check_input_image(problems)
        self._set(edit_region=check("edit_region", self._checked_region))
        sampler = check("sampler", self._checked_sampler)
        if sampler is not None:
            check("num_inference_steps", self.limits.check_steps, sampler.steps)
        if problems:
            raise SettingsError(problems)
        object.__setattr__(self, "sampler", sampler)
        object.__setattr__(self, "warnings", tuple(notes))

    def _set(self, **values) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _checked_seed(self) -> int:
        if self.seed is None or self.seed == RANDOM_SEED:
            return secrets.randbelow(SEED_MAX + 1 - (self.num_images or 1) + 1)
        seed = _whole_number("seed", self.seed)
        last = SEED_MAX - (self.num_images or 1) + 1
        if not 0 <= seed <= last:
            raise ValueError(f"seed {seed} is outside 0..{last}; use {RANDOM_SEED} for a random seed")
        return seed

    def _checked_strength(self) -> float:
        if self.denoising_strength is None:
            return IMG2IMG_STRENGTH if self.input_image is not None else 1.0
        strength = _real_number("denoising_strength", self.denoising_strength)
        if not 0.0 < strength <= 1.0:
            raise ValueError(
                f"denoising_strength must be in (0, 1] (1.0 = pure text-to-image, smaller keeps more of "
                f"input_image), got {strength}"
            )
        return strength

    def _check_input_image(self, problems: list[tuple[str, str]]) -> list[str]:
        image = self.input_image
        if image is not None and not isinstance(image, (str, os.PathLike)) and not hasattr(image, "convert"):
            problems.append(("input_image", f"input_image must be a PIL image or a file path, got {type(image).__name__}"))
        if isinstance(self.denoising_strength, float) and self.denoising_strength < 1.0 and image is None:
            problems.append(("input_image", f"denoising_strength {self.denoising_strength} needs an input_image to start from"))
        if image is not None and self.denoising_strength == 1.0 and self.edit_region is None:
            return ["input_image is ignored at denoising_strength=1.0 (pure text-to-image)"]
        return []

    def _checked_region(self) -> tuple[int, int, int, int] | None:
        """A region edit regenerates one box of `input_image` (pipeline/region.py)."""
        if self.edit_region is None:
            return None
        region = checked_region(self.edit_region)
        if self.input_image is None:
            raise ValueError(f"edit_region {list(region)} needs an input_image: the image whose region is regenerated")
        return region

    def _checked_sampler(self) -> SamplerSettings:
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            raise _Problem("preset", f"preset {self.preset!r} is unknown; choose one of {', '.join(PRESETS)}")
        base = PRESETS[self.preset]
        if self.cfg_scale is not None and self.guidance_schedule is not None:
            raise _Problem("cfg_scale", "pass either cfg_scale (constant guidance) or guidance_schedule, not both")
        schedule_values = None
        if self.guidance_schedule is not None:
            if isinstance(self.guidance_schedule, (str, bytes)) or not hasattr(self.guidance_schedule, "__iter__"):
                raise _Problem("guidance_schedule", f"guidance_schedule must be a list of numbers, got {self.guidance_schedule!r}")
            schedule_values = tuple(_real_number("guidance_schedule", g) for g in self.guidance_schedule)
            if not schedule_values:
                raise _Problem("guidance_schedule", "guidance_schedule is empty; give one guidance value per step")
            object.__setattr__(self, "guidance_schedule", schedule_values)
        steps = self.num_inference_steps
        if steps is None:
            steps = len(schedule_values) if schedule_values is not None else base.steps
        steps = _whole_number("num_inference_steps", steps)
        if steps < 1:
            raise _Problem("num_inference_steps", f"num_inference_steps must be a positive integer, got {steps}")
        object.__setattr__(self, "num_inference_steps", None if self.num_inference_steps is None else steps)
        if schedule_values is not None:
            if len(schedule_values) != steps:
                raise _Problem(
                    "guidance_schedule",
                    f"guidance_schedule has {len(schedule_values)} entries but num_inference_steps is {steps}; "
                    "give one entry per step or leave num_inference_steps out"
                )
            guidance = schedule_values
        elif self.cfg_scale is not None:
            guidance = (_real_number("cfg_scale", self.cfg_scale),) * steps
        else:
            guidance = fit_guidance(base.guidance, steps)
        mu = base.mu if self.mu is None else _real_number("mu", self.mu)
        std = base.std if self.std is None else _real_number("std", self.std)
        if std <= 0:
            raise _Problem("std", f"std must be a positive number, got {std}")
        return SamplerSettings(self.preset, steps, guidance, mu, std)

    # ----- what a run derives from the settings --------------------------------------------------
    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]

    @property
    def times(self) -> list[float]:
        """The N+1 model times of the run (see `sampling.schedule`)."""
        s = self.sampler
        return schedule(s.steps, self.height, self.width, s.mu, s.std, self.denoising_strength)

    @property
    def img2img(self) -> bool:
        """Whether the run starts from `input_image`: below strength 1, or for any region edit (at 1.0
        the region starts from pure noise, and the rest is still the input)."""
        return self.input_image is not None and (self.denoising_strength < 1.0 or self.edit_region is not None)

    def with_changes(self, **changes) -> "GenerationSettings":
        """A copy with some fields changed, validated again (the derived fields are recomputed)."""
        return replace(self, **changes)


__all__ = ["GenerationSettings", "IMG2IMG_STRENGTH", "LimitError", "RANDOM_SEED", "SEED_MAX", "SettingsError", "SizeError"]
