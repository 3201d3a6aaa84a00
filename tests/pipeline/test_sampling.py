"""The sampler against the spec's printed numbers and an independent float64 reimplementation."""
import math
from statistics import NormalDist

import pytest
import torch

from ideogram_app.pipeline.sampling import (
    PRESETS,
    T_MAX,
    T_MIN,
    euler_step,
    fit_guidance,
    guided_velocity,
    resolve_sampler,
    schedule,
)


def reference_t(u: float, height: int, width: int, mu: float, std: float) -> float:
    """Spec §7.1 written out with the standard library only (no torch, no scipy)."""
    mean = mu + 0.5 * math.log(height * width / 512**2)
    t_min = 1 / (1 + math.exp(0.5 * 18))
    t_max = 1 / (1 + math.exp(-0.5 * 15))
    if u <= 0.0:
        return t_max
    if u >= 1.0:
        return t_min
    x = mean + std * NormalDist().inv_cdf(u)
    return min(max(1 - 1 / (1 + math.exp(-x)), t_min), t_max)


def test_schedule_matches_the_spec_values_at_their_printed_precision():
    ts = schedule(48, 1024, 1024)
    assert len(ts) == 49
    printed_head = [0.000123, 0.0230, 0.0359, 0.0477]
    printed_tail = [0.8331, 0.8704, 0.9139, 0.99945]
    for got, want in zip(ts[:4] + ts[-4:], printed_head + printed_tail):
        decimals = len(repr(want).split(".")[1])
        assert round(got, decimals) == pytest.approx(want, abs=10**-decimals / 100), (got, want)
    assert ts[0] == pytest.approx(1.2339e-4, abs=1e-8)
    assert ts[-1] == pytest.approx(0.9994472, abs=1e-7)


@pytest.mark.parametrize("size", [(1024, 1024), (512, 768), (2048, 2048), (1248, 832)])
@pytest.mark.parametrize("mu,std", [(0.0, 1.5), (0.0, 1.75), (0.5, 1.75)])
def test_schedule_equals_an_independent_float64_reference_to_1e6(size, mu, std):
    height, width = size
    n = 48
    ts = schedule(n, height, width, mu=mu, std=std)
    want = [reference_t(i / n, height, width, mu, std) for i in range(n, -1, -1)]
    assert ts == pytest.approx(want, abs=1e-6)


def test_schedule_is_increasing_and_bounded():
    for n in (1, 2, 12, 20, 48):
        ts = schedule(n, 768, 1360)
        assert ts[0] == pytest.approx(T_MIN, rel=1e-6) and ts[-1] == pytest.approx(T_MAX, rel=1e-6)
        assert all(a < b for a, b in zip(ts, ts[1:]))


def test_denoising_strength_rescales_the_grid_like_diffsynth():
    s, n = 0.3, 10
    ts = schedule(n, 1024, 1024, denoising_strength=s)
    want = [reference_t(s * i / n, 1024, 1024, 0.0, 1.5) for i in range(n, -1, -1)]
    assert ts == pytest.approx(want, abs=1e-6)
    # Start level is the s-quantile: much closer to the data than the text-to-image start.
    assert ts[0] > 0.5 and ts[-1] == pytest.approx(T_MAX, rel=1e-6)


def test_presets_match_the_spec_table():
    table = {
        "quality": (48, 45, 7.0, 3, 3.0, 0.0, 1.5),
        "default": (20, 18, 7.0, 2, 3.0, 0.0, 1.75),
        "turbo": (12, 11, 7.0, 1, 3.0, 0.5, 1.75),
    }
    assert set(PRESETS) == set(table)
    for name, (steps, n_main, g_main, n_polish, g_polish, mu, std) in table.items():
        p = PRESETS[name]
        assert p.steps == steps == len(p.guidance)
        assert p.guidance == (g_main,) * n_main + (g_polish,) * n_polish  # chronological
        assert (p.mu, p.std) == (mu, std)


def test_guided_velocity_and_euler_follow_the_formula():
    torch.manual_seed(0)
    vc, vu, z = torch.randn(3, 2, 5, 128).unbind(0)
    g = 7.0
    assert torch.allclose(guided_velocity(vc, vu, g), vu + g * (vc - vu), atol=1e-5)
    assert torch.equal(guided_velocity(vc, None, 1.0), vc)
    with pytest.raises(ValueError, match="unconditional"):
        guided_velocity(vc, None, 3.0)
    assert torch.allclose(euler_step(z, vc, 0.25, 0.5), z + 0.25 * vc)


def test_resolve_sampler_defaults_to_the_quality_preset():
    s = resolve_sampler()
    assert (s.steps, s.guidance, s.mu, s.std) == (48, PRESETS["quality"].guidance, 0.0, 1.5)


def test_steps_override_keeps_the_preset_polish_tail():
    s = resolve_sampler("quality", num_inference_steps=20)
    assert s.guidance == (7.0,) * 17 + (3.0,) * 3
    s = resolve_sampler("turbo", num_inference_steps=30)
    assert s.guidance == (7.0,) * 29 + (3.0,) and (s.mu, s.std) == (0.5, 1.75)
    assert fit_guidance((7.0, 7.0, 3.0), 2) == (7.0, 3.0)
    assert fit_guidance((7.0, 3.0), 1) == (3.0,)


def test_cfg_scale_is_a_constant_schedule_with_any_step_count():
    s = resolve_sampler("default", num_inference_steps=7, cfg_scale=4.5)
    assert s.guidance == (4.5,) * 7 and s.std == 1.75


def test_guidance_schedule_sets_the_step_count():
    s = resolve_sampler(guidance_schedule=[5.0, 4.0, 1.0], mu=0.2, std=1.0)
    assert (s.steps, s.guidance, s.mu, s.std) == (3, (5.0, 4.0, 1.0), 0.2, 1.0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"preset": "fast"}, "preset 'fast' is unknown; choose one of quality, default, turbo"),
        ({"cfg_scale": 3.0, "guidance_schedule": [3.0]}, "either cfg_scale"),
        ({"num_inference_steps": 4, "guidance_schedule": [3.0]}, "has 1 entries but num_inference_steps is 4"),
        ({"num_inference_steps": 0}, "positive integer, got 0"),
        ({"num_inference_steps": 2.5}, "positive integer, got 2.5"),
        ({"guidance_schedule": []}, "guidance_schedule is empty"),
        ({"std": 0.0}, "std must be a positive number"),
        ({"mu": float("nan")}, "mu must be a finite number"),
        ({"cfg_scale": float("inf")}, "guidance values must be finite"),
    ],
)
def test_bad_sampler_settings_have_precise_messages(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        resolve_sampler(**kwargs)
