"""Speed modes and devices as the pipeline and the CLI take them: checked before any file is read,
recorded in the image metadata, one mode per loaded pipeline."""
import json

import pytest
import torch

from ideogram_app.generate import main as generate_main
from ideogram_app.pipeline.pipeline import Ideogram4Pipeline
from ideogram_app.speed.cfg_parallel import DeviceError


def test_unknown_mode_and_impossible_devices_are_refused_before_loading(tmp_path):
    missing = tmp_path / "no-such-model"  # never read: the checks come first
    with pytest.raises(ValueError, match="speed mode 'turbo' is unknown; choose one of eager, exact, fast"):
        Ideogram4Pipeline.from_pretrained(missing, device="cpu", memory="cpu", mode="turbo")
    if torch.cuda.device_count() < 2:
        with pytest.raises(DeviceError, match=r"cuda:[01] does not exist; this machine has (no|1) CUDA GPU"):
            Ideogram4Pipeline.from_pretrained(missing, devices="cuda:0,cuda:1")


def test_mode_is_recorded_and_a_pipeline_leaves_eager_mode_once(tiny_repo):
    pipe = Ideogram4Pipeline.from_pretrained(tiny_repo, device="cpu", memory="cpu", torch_dtype=torch.float32)
    assert pipe.mode == "eager" and pipe.devices == (torch.device("cpu"),)
    image = pipe("a red square", width=64, height=64, seed=1, num_inference_steps=2)
    assert json.loads(image.info["ideogram4"])["settings"]["mode"] == "eager"
    pipe.set_mode("eager")  # the mode it has: nothing to do
    pipe.mode = "exact"  # as if compiled: another mode now needs a fresh load
    with pytest.raises(ValueError, match="already runs in exact mode; load the model again to use fast mode"):
        pipe.set_mode("fast")


def test_one_device_list_is_the_ordinary_pipeline(tiny_repo):
    plain = Ideogram4Pipeline.from_pretrained(tiny_repo, device="cpu", memory="cpu", torch_dtype=torch.float32)
    listed = Ideogram4Pipeline.from_pretrained(tiny_repo, devices="cpu", memory="cpu", torch_dtype=torch.float32)
    assert listed.devices == (torch.device("cpu"),)
    a = plain("a red square", width=64, height=64, seed=3, num_inference_steps=2, output_type="latent")
    b = listed("a red square", width=64, height=64, seed=3, num_inference_steps=2, output_type="latent")
    assert torch.equal(a, b)


def test_cli_refuses_an_unknown_mode_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        generate_main(["--model", "x", "--caption", "hi", "--out", "o.png", "--mode", "warp"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--mode: invalid choice: 'warp'" in err and all(name in err for name in ("eager", "exact", "fast"))


def test_warm_up_compiles_before_the_first_request_and_says_so(tiny_repo):
    """Exact mode on the CPU (inductor): warm_up reports a status line before and after, and the first
    request afterwards compiles nothing new (dynamo's frame counter stays put)."""
    from torch._dynamo.utils import counters

    pipe = Ideogram4Pipeline.from_pretrained(tiny_repo, device="cpu", memory="cpu", torch_dtype=torch.float32,
                                             mode="exact")
    lines = []
    assert pipe.warm_up(lines.append) > 0
    assert lines[0].startswith("compiling the DiT blocks") and lines[-1].startswith("DiT blocks compiled in")
    compiled = counters["stats"]["unique_graphs"]
    pipe("a red square", width=64, height=64, seed=1, num_inference_steps=2)
    assert counters["stats"]["unique_graphs"] == compiled
    eager = Ideogram4Pipeline.from_pretrained(tiny_repo, device="cpu", memory="cpu", torch_dtype=torch.float32)
    assert eager.warm_up(lines.append) == 0.0


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_loras_unmerged_and_merged_in_the_compiled_modes(tiny_repos, tmp_path, mode):
    """A LoRA, unmerged then merged, on a pipeline in `mode` makes the eager pipeline's image with the
    same LoRA (compiled fusion: fp32 rounding only; fast mode: within its e4m3 error), and unloading it
    brings back the mode's own base image bit for bit."""
    import numpy as np

    from tests.lora.loras import fused_truth, write_comfyui

    path = write_comfyui(tmp_path / "style.safetensors", fused_truth(seed=3, rank=4, alpha=4.0))
    run = dict(width=80, height=64, preset="turbo", num_inference_steps=3, seed=4)
    eager = Ideogram4Pipeline.from_pretrained(tiny_repos["bf16"], device="cpu", memory="cpu", torch_dtype=torch.float32)
    pipe = Ideogram4Pipeline.from_pretrained(tiny_repos["bf16"], device="cpu", memory="cpu", torch_dtype=torch.float32,
                                             mode=mode)
    base = np.asarray(pipe("a cat", **run)).astype(int)
    bound = 1 if mode == "exact" else 2
    # Mean 8-bit levels. Measured: exact within 1 of eager; fast 1.0-1.3 from eager with the LoRA
    # (0.7 without), while the LoRA itself moves the image by 14.
    for merge in (False, True):
        eager.load_lora(path, scale=2.0, merge=merge)
        pipe.load_lora(path, scale=2.0, merge=merge)
        with_lora = np.asarray(pipe("a cat", **run)).astype(int)
        reference = np.asarray(eager("a cat", **run)).astype(int)
        assert np.abs(with_lora - reference).mean() <= bound, merge
        assert np.abs(with_lora - base).mean() > 3 * bound, merge
        eager.unload_lora()
        pipe.unload_lora()
        assert np.array_equal(np.asarray(pipe("a cat", **run)).astype(int), base), merge
