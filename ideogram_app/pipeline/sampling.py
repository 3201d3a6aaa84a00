"""The official Ideogram 4 sampler as plain functions (docs/pipeline.md, "Sampler").

Time runs from t = 0 (noise) to t = 1 (data); the DiT predicts v = x_data - noise, so Euler in t
needs no sign flip. The schedule is the resolution-shifted logit-normal of the official
`LogitNormalSchedule`, clamped to [T_MIN, T_MAX]; the last step lands on T_MAX, not on 1.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# logsnr_max = 18 and logsnr_min = -15 of the official schedule.
T_MIN = 1.0 / (1.0 + math.exp(0.5 * 18.0))
T_MAX = 1.0 / (1.0 + math.exp(-0.5 * 15.0))


@dataclass(frozen=True)
class SamplerSettings:
    """What a run uses: an official preset as published, or a preset combined with explicit overrides
    (`GenerationSettings` does that). `guidance` is chronological: entry 0 is the first (noisiest) step."""

    preset: str
    steps: int
    guidance: tuple[float, ...]
    mu: float
    std: float


PRESETS: dict[str, SamplerSettings] = {
    "quality": SamplerSettings("quality", 48, (7.0,) * 45 + (3.0,) * 3, mu=0.0, std=1.5),
    "default": SamplerSettings("default", 20, (7.0,) * 18 + (3.0,) * 2, mu=0.0, std=1.75),
    "turbo": SamplerSettings("turbo", 12, (7.0,) * 11 + (3.0,) * 1, mu=0.5, std=1.75),
}


def schedule_mean(height: int, width: int, mu: float = 0.0) -> float:
    """Resolution-aware logit-normal mean: bigger images spend more steps at high noise."""
    return mu + 0.5 * math.log(height * width / 512.0**2)


def time_at(u: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Map uniform grid values u in [0, 1] to model time, in float64 (official precision)."""
    u = u.to(torch.float64)
    t = 1.0 - torch.sigmoid(mean + std * torch.special.ndtri(u))
    return t.clamp(T_MIN, T_MAX)


def schedule(
    num_steps: int,
    height: int,
    width: int,
    mu: float = 0.0,
    std: float = 1.5,
    denoising_strength: float = 1.0,
) -> list[float]:
    """The N+1 model times of a run, chronological (first = start noise level, last = T_MAX).

    The official grid is u_i = i/N (an fp32 linspace), walked from u = 1 down to u = 0.
    `denoising_strength` s < 1 is DiffSynth's img2img rescale u_i = s*i/N: all N steps are
    spent inside u in [0, s], starting from t(s). Values are float64 maths cast to fp32.
    """
    u = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float32) * denoising_strength
    t = time_at(u, schedule_mean(height, width, mu), std).to(torch.float32)
    return t.flip(0).tolist()


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor | None, g: float) -> torch.Tensor:
    """Asymmetric CFG: g*v_cond + (1-g)*v_uncond. With g = 1 the unconditional pass is not needed."""
    if v_uncond is None:
        if g != 1.0:
            raise ValueError(f"guidance {g} needs the unconditional velocity")
        return v_cond
    return g * v_cond + (1.0 - g) * v_uncond


def euler_step(z: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step in model time: z(t_next) = z(t) + v * (t_next - t)."""
    return z + v * (t_next - t)


def fit_guidance(guidance: tuple[float, ...], steps: int) -> tuple[float, ...]:
    """Stretch or cut a chronological guidance schedule to `steps`, aligned at the END.

    The tail (the low-guidance polish steps) is what a preset is tuned for, so it is kept: fewer
    steps drop entries from the front, more steps repeat the first entry.
    """
    if steps <= len(guidance):
        return tuple(guidance[len(guidance) - steps:])
    return (guidance[0],) * (steps - len(guidance)) + tuple(guidance)


class GenerationCancelled(RuntimeError):
    """The stop event was set; raised between denoising steps, so no step is left half done."""


Velocity = Callable[[torch.Tensor, float, float], torch.Tensor]
AfterStep = Callable[[int, float, torch.Tensor], torch.Tensor]


def denoise(
    velocity: Velocity,
    z: torch.Tensor,
    times: Sequence[float],
    guidance: Sequence[float],
    callback: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    after_step: AfterStep | None = None,
) -> torch.Tensor:
    """Integrate from `times[0]` to `times[-1]` with Euler steps; returns the final latent tokens.

    `velocity(z, t, g)` is the guided velocity at time t with guidance g: one DiT pair on one GPU
    today, and later a compiled pair, a pair split over two GPUs or a LoRA-wrapped one; the loop
    does not care. `after_step(step, t_next, z)` sees the latents after every step and returns the
    latents to continue from (a region edit puts back the kept area; a live preview looks and returns
    `z`). `callback(step, total)` runs after that; a set `stop` raises GenerationCancelled before the
    next step starts.
    """
    total = len(times) - 1
    if len(guidance) != total:
        raise ValueError(f"{len(guidance)} guidance values for {total} steps")
    for step in range(total):
        if stop is not None and stop.is_set():
            raise GenerationCancelled(f"generation stopped after {step} of {total} steps")
        t, t_next = times[step], times[step + 1]
        z = euler_step(z, velocity(z, t, guidance[step]), t, t_next)
        if after_step is not None:
            z = after_step(step + 1, t_next, z)
        if callback is not None:
            callback(step + 1, total)
    return z
