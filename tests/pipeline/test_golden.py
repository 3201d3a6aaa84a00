"""Pinned images: the refactors and speed-ups that follow must not change what the pipeline draws.

`golden_images.npz` was recorded with the pipeline as it stood before the seams refactor (commit
816ec37), on tiny repos in each checkpoint layout, CPU, float32. Every case goes through the public
API; one goes through the CLI in a subprocess, as a user would run it.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ideogram_app.pipeline.pipeline import Ideogram4Pipeline

GOLDEN = np.load(Path(__file__).with_name("golden_images.npz"))
CAPTION = {
    "high_level_description": "A poster with a red title",
    "compositional_deconstruction": {
        "background": "plain blue",
        "elements": [{"type": "text", "bbox": [100, 120, 300, 880], "text": "HELLO", "desc": "bold serif"}],
    },
}
CASES = {
    "t2i_fp8": dict(layout="fp8", prompt=CAPTION, width=80, height=64, preset="turbo", seed=7),
    "t2i_bf16": dict(layout="bf16", prompt=CAPTION, width=80, height=64, preset="turbo", seed=7),
    "t2i_split": dict(layout="split", prompt=CAPTION, width=80, height=64, preset="turbo", seed=7),
    "img2img_fp8": dict(layout="fp8", prompt=CAPTION, width=80, height=64, preset="turbo", seed=11,
                        input_image="gradient", denoising_strength=0.6),
    "cfg_plain_bf16": dict(layout="bf16", prompt="a red bicycle leaning on a wall", width=64, height=96,
                           cfg_scale=3.0, num_inference_steps=4, seed=5, num_images=2),
}


def gradient(width: int, height: int) -> Image.Image:
    """A deterministic img2img input: red rises left to right, green top to bottom."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    channels = [np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                np.full((height, width, 1), 128, np.float32)]
    return Image.fromarray(np.concatenate(channels, axis=2).round().astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def golden_pipes(tiny_repos):
    return {
        layout: Ideogram4Pipeline.from_pretrained(str(repo), torch_dtype=torch.float32, memory="cpu")
        for layout, repo in tiny_repos.items()
    }


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_draws_the_pinned_images(golden_pipes, name):
    case = dict(CASES[name])
    pipe = golden_pipes[case.pop("layout")]
    if case.get("input_image") == "gradient":
        case["input_image"] = gradient(case["width"], case["height"])
    result = pipe(**case)
    images = np.stack([np.asarray(image) for image in (result if isinstance(result, list) else [result])])
    assert images.shape == GOLDEN[name].shape
    assert np.array_equal(images, GOLDEN[name]), f"{name}: max pixel difference {np.abs(images.astype(int) - GOLDEN[name]).max()}"


def test_cli_draws_the_pinned_image(tiny_repos, tmp_path):
    caption = tmp_path / "caption.json"
    caption.write_text(json.dumps(CAPTION))
    out = tmp_path / "cli.png"
    subprocess.run(
        [sys.executable, "-m", "ideogram_app.generate", "--model", str(tiny_repos["fp8"]), "--caption", str(caption),
         "--out", str(out), "--size", "80x64", "--preset", "turbo", "--seed", "7", "--dtype", "float32",
         "--memory", "cpu"],
        check=True, capture_output=True, timeout=300,
    )
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), GOLDEN["t2i_fp8"][0])
