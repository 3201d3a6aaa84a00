"""The app's requests are `GenerationSettings`: the controls' initial values and the API's defaults
give the same settings as the command line; labels name the controls; ZeroGPU durations; Stop."""
import inspect

import gradio as gr
import pytest

from ideogram_app.generate import build_parser, check_arguments
from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.settings import GenerationSettings, SettingsError
from ideogram_app.ui.api import PublicApi
from ideogram_app.ui.generation import StopSignals, describe_problems, settings_from_controls
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.tabs.compose import SETTING_LABELS, ComposeTab
from ideogram_app.ui.wiring import Components

CONTROLS = ("preset", "width", "height", "seed", "randomize", "num_images", "input_image", "strength", "steps", "guidance")


def compose_controls(limits=DEFAULT_LIMITS) -> dict:
    with gr.Blocks() as demo:
        ui = Components(demo)
        ComposeTab(ModelSlot(), limits).build(ui)
    return {name: ui[name] for name in CONTROLS}


def cli_settings(tmp_path) -> GenerationSettings:
    args = build_parser().parse_args(["--model", "m", "--caption", "a red apple", "--out", str(tmp_path / "o.png"),
                                      "--seed", "5"])
    return check_arguments(args)[1]


def test_the_generate_panel_starts_at_the_command_line_defaults(tmp_path):
    controls = compose_controls()
    values = {name: component.value for name, component in controls.items()}
    assert values["randomize"] is True and values["input_image"] is None
    app = settings_from_controls(**{**values, "seed": 5, "randomize": False}, limits=DEFAULT_LIMITS)
    assert app == cli_settings(tmp_path)
    assert app.sampler == GenerationSettings(seed=5).sampler  # the pipeline's default preset, not the app's own


def test_the_api_defaults_are_the_command_line_defaults(tmp_path):
    defaults = {name: p.default for name, p in inspect.signature(PublicApi.generate).parameters.items()
                if p.default is not p.empty and p.annotation is not gr.Request}
    assert defaults.pop("seed") == -1
    assert defaults.pop("loras") is None  # as the command line without --lora
    assert defaults.pop("mode") is None  # the loaded model's own mode
    assert GenerationSettings(**defaults, seed=5) == cli_settings(tmp_path)


def test_the_images_slider_follows_the_limits():
    assert compose_controls()["num_images"].maximum == DEFAULT_LIMITS.max_images
    assert compose_controls(Limits(max_images=3))["num_images"].maximum == 3
    with pytest.raises(SettingsError, match="num_images is 4; choose 1 to 3"):
        settings_from_controls(preset="turbo", width=64, height=64, seed=1, randomize=False, num_images=4,
                               input_image=None, strength=0.7, limits=Limits(max_images=3))


def test_controls_become_settings(tmp_path):
    image = tmp_path / "in.png"
    base = dict(preset="Turbo · 12 steps", width=512.0, height=256, seed=3, randomize=False, num_images=2,
                input_image=None, strength=0.4, limits=DEFAULT_LIMITS)
    settings = settings_from_controls(**base)
    assert (settings.preset, settings.width, settings.seeds, settings.denoising_strength) == ("turbo", 512, [3, 4], 1.0)
    with_image = settings_from_controls(**{**base, "input_image": str(image)})
    assert with_image.denoising_strength == 0.4 and with_image.input_image == str(image)
    drawn = {settings_from_controls(**{**base, "randomize": True}).seed for _ in range(3)}
    drawn |= {settings_from_controls(**{**base, "seed": -1}).seed for _ in range(3)}
    assert len(drawn) > 1 and all(0 <= seed < 2**32 - 1 for seed in drawn)  # random, room for seed + 1
    with pytest.raises(SettingsError) as err:
        settings_from_controls(**{**base, "seed": -2, "width": 8})
    assert describe_problems(err.value, SETTING_LABELS) == (
        "Width × Height: width 8 is outside the allowed 64-2048 pixels; "
        "Seed: seed -2 is outside 0..4294967294; use -1 for a random seed")


def test_a_field_without_a_label_keeps_its_name():
    assert describe_problems(SettingsError([("mu", "mu must be a finite number")]), SETTING_LABELS) == \
        "mu: mu must be a finite number"


def test_stop_signals_are_per_session():
    signals = StopSignals()
    a, b = signals.start("a"), signals.start("b")
    assert signals.stop("a")
    assert a.is_set() and not b.is_set()
    signals.finish("a")
    assert not signals.stop("a")


def test_generation_waits_while_a_training_run_holds_the_gpu(tiny_repos):
    """A live process holding the lease (as a trainer the Train tab started would) makes Generate refuse
    with the reason before the pipeline runs; once it ends, the same request generates."""
    import subprocess
    import sys

    import torch

    from ideogram_app.pipeline.pipeline import Ideogram4Pipeline
    from ideogram_app.ui.generation import GenerationFailed, generate_images
    from ideogram_app.ui.runs import LEASE

    pipe = Ideogram4Pipeline.from_pretrained(str(tiny_repos["bf16"]), torch_dtype=torch.float32, memory="cpu")
    request = pipe.prepare("a cat", GenerationSettings(width=80, height=64, num_inference_steps=1, seed=1))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        LEASE.take("style-run", holder)
        with pytest.raises(GenerationFailed, match=r"A training run \(style-run\) is using the GPU"):
            generate_images(pipe, request)
    finally:
        holder.kill()
        holder.wait()
    assert len(generate_images(pipe, request)) == 1


def test_previews_come_about_eight_times_a_run():
    from ideogram_app.ui.generation import preview_every

    assert [preview_every(steps) for steps in (1, 4, 12, 20, 48, 200)] == [1, 1, 2, 2, 6, 25]


def test_the_time_left_counts_the_remaining_steps_and_the_decode(monkeypatch):
    """Hand-computed: steps of 2 s after a first step of 5 s (encoding), 10 steps; with a measured
    decode of 7 s, after step 4 there are 6 steps x 2 s + 7 s = 19 s left; without a measurement
    the decode is guessed as DECODE_GUESS_STEPS steps."""
    from ideogram_app.ui import generation
    from ideogram_app.ui.generation import DECODE_GUESS_STEPS, RunClock

    now = {"t": 100.0}
    monkeypatch.setattr(generation.time, "monotonic", lambda: now["t"])
    measured, guessed = RunClock(10, 1.0, decode_estimate=7.0), RunClock(10, 1.0)
    for clock in (measured, guessed):
        now["t"] = 100.0
        assert clock.start() == "Encoding the text…"
        now["t"] = 105.0
        clock.step(1)
        for step in (2, 3, 4):
            now["t"] += 2.0
            label = clock.step(step)
        assert label == f"Step 4 of 10 · about {12 + (7 if clock is measured else DECODE_GUESS_STEPS * 2):.0f} s left, " \
                        "decoding included"
    now["t"] += 2.0 * 6
    assert measured.step(10) == "Decoding… about 7 s left"
    now["t"] += 3.0
    assert measured.decode_seconds() == 3.0


def test_live_runs_are_per_session_and_versioned():
    from ideogram_app.ui.generation import LiveRuns

    live = LiveRuns()
    live.update("a", label="ignored: no run")
    assert live.read("a") is None
    live.start("a", "Encoding the text…")
    first = live.read("a")
    live.update("a", label="Step 1 of 2")
    second = live.read("a")
    assert (first.version, first.label) == (1, "Encoding the text…") and (second.version, second.label) == (2, "Step 1 of 2")
    assert live.read("b") is None
    live.finish("a")
    assert live.read("a") is None
