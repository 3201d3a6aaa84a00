"""The one request model: defaults, how the sampler settings combine, and every rule's message."""
import math

import pytest

from ideogram_app.limits import Limits
from ideogram_app.pipeline.sampling import PRESETS
from ideogram_app.pipeline.settings import IMG2IMG_STRENGTH, SEED_MAX, GenerationSettings, SettingsError


def test_defaults_are_the_quality_preset_at_1024():
    s = GenerationSettings(seed=3)
    assert (s.width, s.height, s.num_images, s.seeds, s.denoising_strength) == (1024, 1024, 1, [3], 1.0)
    assert s.sampler == PRESETS["quality"]
    assert len(s.times) == 49


def test_steps_override_keeps_the_preset_polish_tail():
    s = GenerationSettings(preset="quality", num_inference_steps=20).sampler
    assert s.guidance == (7.0,) * 17 + (3.0,) * 3
    s = GenerationSettings(preset="turbo", num_inference_steps=30).sampler
    assert s.guidance == (7.0,) * 29 + (3.0,) and (s.mu, s.std) == (0.5, 1.75)


def test_cfg_scale_is_a_constant_schedule_with_any_step_count():
    s = GenerationSettings(preset="default", num_inference_steps=7, cfg_scale=4.5).sampler
    assert s.guidance == (4.5,) * 7 and s.std == 1.75


def test_guidance_schedule_sets_the_step_count():
    s = GenerationSettings(guidance_schedule=[5.0, 4.0, 1.0], mu=0.2, std=1.0).sampler
    assert (s.steps, s.guidance, s.mu, s.std) == (3, (5.0, 4.0, 1.0), 0.2, 1.0)


def test_random_seeds_leave_room_for_the_batch():
    for _ in range(50):
        s = GenerationSettings(seed=-1, num_images=8)
        assert 0 <= s.seed and s.seeds[-1] <= SEED_MAX
    assert GenerationSettings(seed=None).seed >= 0


def test_json_numbers_are_accepted_when_whole():
    s = GenerationSettings(width=1024.0, height=512.0, seed=5.0, num_images=2.0, num_inference_steps=4.0)
    assert (s.width, s.height, s.seed, s.num_images, s.sampler.steps) == (1024, 512, 5, 2, 4)
    assert isinstance(s.width, int) and isinstance(s.seed, int)


def test_img2img_strength_defaults_with_an_input_image():
    assert GenerationSettings(input_image="in.png").denoising_strength == IMG2IMG_STRENGTH
    assert GenerationSettings(input_image="in.png").img2img
    ignored = GenerationSettings(input_image="in.png", denoising_strength=1.0)
    assert not ignored.img2img and "input_image is ignored" in ignored.warnings[0]


def test_changes_are_validated_again():
    s = GenerationSettings(seed=1)
    assert s.with_changes(width=512).width == 512
    with pytest.raises(SettingsError, match="width 100 is not a multiple of 16"):
        s.with_changes(width=100, height=512)


def test_limits_can_be_raised_by_a_server():
    with pytest.raises(SettingsError, match="outside the allowed 64-2048"):
        GenerationSettings(width=4096, height=1024)
    big = Limits(max_side=4096, max_pixels=4096 * 4096)
    s = GenerationSettings(width=4096, height=1024, limits=big)
    assert s.warnings == ("width 4096 is outside the recommended 256-2048 pixels; expect weaker images",)


@pytest.mark.parametrize(
    "values,field,message",
    [
        ({"preset": "fast"}, "preset", "preset 'fast' is unknown; choose one of quality, default, turbo"),
        ({"preset": ["quality"]}, "preset", "preset ['quality'] is unknown"),
        ({"cfg_scale": 3.0, "guidance_schedule": [3.0]}, "cfg_scale", "either cfg_scale"),
        ({"num_inference_steps": 4, "guidance_schedule": [3.0]}, "guidance_schedule", "has 1 entries but num_inference_steps is 4"),
        ({"num_inference_steps": 0}, "num_inference_steps", "positive integer, got 0"),
        ({"num_inference_steps": 2.5}, "num_inference_steps", "num_inference_steps must be a whole number, got 2.5"),
        ({"num_inference_steps": 201}, "num_inference_steps", "201 denoising steps asked for; choose 1 to 200"),
        ({"guidance_schedule": []}, "guidance_schedule", "guidance_schedule is empty"),
        ({"guidance_schedule": "7,3"}, "guidance_schedule", "guidance_schedule must be a list of numbers"),
        ({"std": 0.0}, "std", "std must be a positive number"),
        ({"mu": math.nan}, "mu", "mu must be a finite number, got nan"),
        ({"cfg_scale": math.inf}, "cfg_scale", "cfg_scale must be a finite number, got inf"),
        ({"width": 1000}, "size", "width 1000 is not a multiple of 16; the nearest valid widths are 992 and 1008"),
        ({"width": 100000, "height": 100000}, "size", "width 100000 is outside the allowed 64-2048 pixels; height 100000"),
        ({"width": 48}, "size", "width 48 is outside the allowed 64-2048 pixels"),
        ({"width": math.nan}, "width", "width must be a whole number, got nan"),
        ({"width": "1024"}, "width", "width must be a whole number, got '1024'"),
        ({"height": True}, "height", "height must be a whole number, got True"),
        ({"num_images": 0}, "num_images", "num_images is 0; choose 1 to 8"),
        ({"num_images": 9}, "num_images", "num_images is 9; choose 1 to 8"),
        ({"seed": -5}, "seed", "seed -5 is outside 0..4294967295; use -1 for a random seed"),
        ({"seed": 2**32}, "seed", "seed 4294967296 is outside 0..4294967295"),
        ({"seed": math.inf}, "seed", "seed must be a whole number, got inf"),
        ({"seed": "abc"}, "seed", "seed must be a whole number, got 'abc'"),
        ({"seed": SEED_MAX, "num_images": 2}, "seed", "seed 4294967295 is outside 0..4294967294"),
        ({"denoising_strength": 0.0}, "denoising_strength", "denoising_strength must be in (0, 1]"),
        ({"denoising_strength": math.nan}, "denoising_strength", "denoising_strength must be a finite number, got nan"),
        ({"denoising_strength": 0.5}, "input_image", "denoising_strength 0.5 needs an input_image to start from"),
        ({"input_image": 42, "denoising_strength": 0.5}, "input_image", "input_image must be a PIL image or a file path, got int"),
    ],
)
def test_every_rule_names_its_field(values, field, message):
    with pytest.raises(SettingsError) as err:
        GenerationSettings(**values)
    assert any(f == field and message in m for f, m in err.value.problems), err.value.problems


def test_all_problems_are_reported_at_once():
    with pytest.raises(SettingsError) as err:
        GenerationSettings(width=1000, seed=-7, num_images=0, preset="x")
    assert [field for field, _ in err.value.problems] == ["size", "num_images", "seed", "preset"]
    assert all(message in str(err.value) for _, message in err.value.problems)
