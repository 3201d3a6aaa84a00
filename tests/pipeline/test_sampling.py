"""The sampler against the numbers printed in docs/pipeline.md, "Sampler", and a float64 reimplementation."""
import math
from statistics import NormalDist

import pytest
import torch

from ideogram_app.pipeline.sampling import (
    PRESETS,
    T_MAX,
    T_MIN,
    GenerationCancelled,
    denoise,
    euler_step,
    fit_guidance,
    guided_velocity,
    schedule,
)


def reference_t(u: float, height: int, width: int, mu: float, std: float) -> float:
    """The schedule formula of docs/pipeline.md, "Sampler", with the standard library only (no torch, no scipy)."""
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


def test_fit_guidance_keeps_the_polish_tail():
    assert fit_guidance((7.0, 7.0, 3.0), 2) == (7.0, 3.0)
    assert fit_guidance((7.0, 3.0), 1) == (3.0,)
    assert fit_guidance((7.0, 3.0), 4) == (7.0, 7.0, 7.0, 3.0)


def test_denoise_is_euler_over_any_velocity_callable():
    """A linear velocity field v = a - z has the closed-form Euler recursion z' = z + (a - z) dt; the loop
    must reproduce it step by step, pass each step's guidance, and report progress."""
    a = torch.tensor([[2.0, -1.0]])
    times, guidance = [0.0, 0.25, 0.75, 0.9], [7.0, 5.0, 3.0]
    seen, progress = [], []

    def velocity(z, t, g):
        seen.append((t, g))
        return a - z

    z = denoise(velocity, torch.zeros(1, 2), times, guidance, callback=lambda i, n: progress.append((i, n)))
    expected = torch.zeros(1, 2)
    for t, t_next in zip(times, times[1:]):
        expected = expected + (a - expected) * (t_next - t)
    assert torch.allclose(z, expected)
    assert seen == [(0.0, 7.0), (0.25, 5.0), (0.75, 3.0)] and progress == [(1, 3), (2, 3), (3, 3)]


def test_denoise_stops_between_steps():
    import threading

    stop = threading.Event()
    calls = []

    def velocity(z, t, g):
        calls.append(t)
        stop.set()
        return z

    with pytest.raises(GenerationCancelled, match="stopped after 1 of 3 steps"):
        denoise(velocity, torch.zeros(1), [0.0, 0.1, 0.2, 0.3], [1.0, 1.0, 1.0], stop=stop)
    assert calls == [0.0]


def test_after_step_sees_each_step_and_its_return_is_what_the_loop_continues_from():
    """A hook that pins the first coordinate to 5 after every step: the next velocity sees the pinned
    value, and the hook gets the step number and the time just reached."""
    times, seen_by_velocity, seen_by_hook = [0.0, 0.5, 1.0], [], []

    def velocity(z, t, g):
        seen_by_velocity.append(z.clone())
        return torch.ones_like(z)

    def pin(step, t_next, z):
        seen_by_hook.append((step, t_next, z.clone()))
        return torch.cat([torch.full_like(z[:1], 5.0), z[1:]])

    z = denoise(velocity, torch.zeros(2), times, [1.0, 1.0], after_step=pin)
    assert [(s, t) for s, t, _ in seen_by_hook] == [(1, 0.5), (2, 1.0)]
    assert torch.equal(seen_by_velocity[1], torch.tensor([5.0, 0.5]))
    assert torch.equal(seen_by_hook[1][2], torch.tensor([5.5, 1.0]))
    assert torch.equal(z, torch.tensor([5.0, 1.0]))
