"""The official Ideogram 4 sampler as plain functions (spec §7).

Time runs from t = 0 (noise) to t = 1 (data); the DiT predicts v = x_data - noise, so Euler in t
needs no sign flip. The schedule is the resolution-shifted logit-normal of the official
`LogitNormalSchedule`, clamped to [T_MIN, T_MAX]; the last step lands on T_MAX, not on 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# logsnr_max = 18 and logsnr_min = -15 of the official schedule.
T_MIN = 1.0 / (1.0 + math.exp(0.5 * 18.0))
T_MAX = 1.0 / (1.0 + math.exp(-0.5 * 15.0))


@dataclass(frozen=True)
class SamplerPreset:
    """One official preset. `guidance` is chronological: entry 0 is the first (noisiest) step."""

    name: str
    steps: int
    guidance: tuple[float, ...]
    mu: float
    std: float


PRESETS: dict[str, SamplerPreset] = {
    "quality": SamplerPreset("quality", 48, (7.0,) * 45 + (3.0,) * 3, mu=0.0, std=1.5),
    "default": SamplerPreset("default", 20, (7.0,) * 18 + (3.0,) * 2, mu=0.0, std=1.75),
    "turbo": SamplerPreset("turbo", 12, (7.0,) * 11 + (3.0,) * 1, mu=0.5, std=1.75),
}


def schedule_mean(height: int, width: int, mu: float = 0.0) -> float:
    """Resolution-aware logit-normal mean: bigger images spend more steps at high noise."""
    return mu + 0.5 * math.log(height * width / 512.0**2)


def time_at(u: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Map uniform grid values u in [0, 1] to model time, in float64 (official precision)."""
    u = u.to(torch.float64)
    t = 1.0 - torch.sigmoid(mean + std * torch.special.ndtri(u))
    return t.clamp(T_MIN, T_MAX)


def check_denoising_strength(strength: object) -> float:
    """The one img2img strength rule: a number in (0, 1]; 1.0 is pure text-to-image."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ValueError(
            f"denoising_strength must be in (0, 1] (1.0 = pure text-to-image, smaller keeps more of "
            f"input_image), got {strength!r}"
        )
    return float(strength)


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
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
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


@dataclass(frozen=True)
class SamplerSettings:
    """What a run actually uses, after the preset and the explicit overrides are combined."""

    preset: str
    steps: int
    guidance: tuple[float, ...]
    mu: float
    std: float


def fit_guidance(guidance: tuple[float, ...], steps: int) -> tuple[float, ...]:
    """Stretch or cut a chronological guidance schedule to `steps`, aligned at the END.

    The tail (the low-guidance polish steps) is what a preset is tuned for, so it is kept: fewer
    steps drop entries from the front, more steps repeat the first entry.
    """
    if steps <= len(guidance):
        return tuple(guidance[len(guidance) - steps:])
    return (guidance[0],) * (steps - len(guidance)) + tuple(guidance)


def resolve_sampler(
    preset: str = "quality",
    num_inference_steps: int | None = None,
    cfg_scale: float | None = None,
    guidance_schedule: list[float] | tuple[float, ...] | None = None,
    mu: float | None = None,
    std: float | None = None,
) -> SamplerSettings:
    """Combine a preset with explicit overrides; every explicit value wins over the preset.

    - steps: `num_inference_steps`, else the length of `guidance_schedule`, else the preset's.
    - guidance: `guidance_schedule` (must have one entry per step), else a constant `cfg_scale`,
      else the preset's schedule fitted to the step count by `fit_guidance`.
    - mu / std: the explicit value, else the preset's.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset]
    if cfg_scale is not None and guidance_schedule is not None:
        raise ValueError("pass either cfg_scale (constant guidance) or guidance_schedule, not both")
    if guidance_schedule is not None:
        guidance_schedule = tuple(float(g) for g in guidance_schedule)
        if not guidance_schedule:
            raise ValueError("guidance_schedule is empty; give one guidance value per step")
    steps = num_inference_steps
    if steps is None:
        steps = len(guidance_schedule) if guidance_schedule is not None else base.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    if guidance_schedule is not None:
        if len(guidance_schedule) != steps:
            raise ValueError(
                f"guidance_schedule has {len(guidance_schedule)} entries but num_inference_steps is "
                f"{steps}; give one entry per step or leave num_inference_steps out"
            )
        guidance = guidance_schedule
    elif cfg_scale is not None:
        guidance = (float(cfg_scale),) * steps
    else:
        guidance = fit_guidance(base.guidance, steps)
    mu = base.mu if mu is None else float(mu)
    std = base.std if std is None else float(std)
    if not math.isfinite(mu):
        raise ValueError(f"mu must be a finite number, got {mu}")
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a positive number, got {std}")
    if not all(math.isfinite(g) for g in guidance):
        raise ValueError("guidance values must be finite numbers")
    return SamplerSettings(preset=preset, steps=steps, guidance=guidance, mu=mu, std=std)
