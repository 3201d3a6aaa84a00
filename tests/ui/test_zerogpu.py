"""The ZeroGPU duration a request asks for: computed from its size, steps and image count, checked
against the formula worked by hand, growing with each, and kept within its bounds."""
import pytest

from ideogram_app.pipeline.settings import GenerationSettings
from ideogram_app.ui.zerogpu import MAX_DURATION_S, MIN_DURATION_S, gpu_duration, step_seconds


def test_one_default_image_at_1024_by_hand():
    """20 steps at 1024²: 64×64 = 4096 image tokens + 1024 text tokens = 5120 tokens; one forward is
    1.733e10·5120 + 6.27e5·5120² = 8.87296e13 + 1.64364e13 = 1.0516e14 FLOPs, two per step at 1e14
    FLOP/s = 2.1033 s; 20 steps = 42.07 s, + 5 s decode (1 MP) + 20 s attach = 67.07 -> 68 s."""
    assert step_seconds(1024, 1024) == pytest.approx(2.10332, rel=1e-5)
    assert gpu_duration(GenerationSettings(preset="default")) == 68


def test_the_duration_grows_with_steps_size_and_images():
    base = gpu_duration(GenerationSettings(preset="default"))
    assert gpu_duration(GenerationSettings(preset="quality")) > base
    assert gpu_duration(GenerationSettings(preset="turbo")) < base
    assert gpu_duration(GenerationSettings(preset="default", num_images=2)) > base
    assert abs(gpu_duration(GenerationSettings(preset="default", width=1360, height=768)) - base) <= 1  # ~1 MP too
    assert gpu_duration(GenerationSettings(preset="default", width=1456, height=1456)) > base


def test_the_duration_is_bounded():
    assert gpu_duration(GenerationSettings(preset="turbo", width=256, height=256)) == MIN_DURATION_S
    assert gpu_duration(GenerationSettings(preset="quality", width=2048, height=2048, num_images=4)) == MAX_DURATION_S
