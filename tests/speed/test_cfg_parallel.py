"""CFG-parallel against the single-device pipeline on the tiny repos: two devices in one process (both
"cpu" here: the same arithmetic, so bit for bit), two real gloo processes, the device-list rules, and
the g = 1 skip counted on the real modules. The GPU tests at the end need two CUDA devices."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from ideogram_app.loading.dit import load_transformer
from ideogram_app.pipeline.conditioning import initial_noise, prepare_conditioning
from ideogram_app.pipeline.metadata import read_image_metadata
from ideogram_app.pipeline.sampling import denoise, schedule
from ideogram_app.pipeline.sizes import token_grid
from ideogram_app.pipeline.velocity import dit_pair_velocity
from ideogram_app.speed.cfg_parallel import (
    DeviceError, cfg_velocity, distributed_cfg_velocity, main, parse_devices, place_for_cfg_parallel, two_device_velocity,
)
from tests.lora.loras import fused_truth, write_comfyui

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 80, 64  # 5x4 image tokens
PROMPT = "a red fox in the snow"
GUIDANCE = (7.0, 1.0, 3.0, 1.0)  # guided and unguided steps, in both orders


def load_pipeline(repo, **options):
    """Imported here, not at the top: the spawned ranks import this module, and the pipeline module
    pulls in transformers, which would double their start-up time."""
    from ideogram_app.pipeline.pipeline import Ideogram4Pipeline

    return Ideogram4Pipeline.from_pretrained(str(repo), torch_dtype=torch.float32, **options)


@pytest.fixture(scope="module")
def pipe(tiny_repos):
    return load_pipeline(tiny_repos["bf16"], memory="cpu")


def conditioning_and_noise(pipe, unconditional=None, batch=1):
    grid_h, grid_w = token_grid(WIDTH, HEIGHT)
    features = pipe.encode_prompt(PROMPT)
    conditioning = prepare_conditioning(pipe.transformer, unconditional or pipe.unconditional_transformer, features,
                                        grid_h, grid_w, batch, pipe.memory)
    return conditioning, initial_noise(list(range(3, 3 + batch)), grid_h, grid_w, torch.device("cpu"))


def times():
    return schedule(len(GUIDANCE), HEIGHT, WIDTH)


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).int()


def count_forwards(module):
    calls = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


@torch.inference_mode()
def test_two_devices_give_the_single_device_latents_bit_for_bit(pipe):
    conditioning, z = conditioning_and_noise(pipe, batch=2)
    one = denoise(dit_pair_velocity(pipe.transformer, pipe.unconditional_transformer, conditioning, pipe.memory), z, times(), GUIDANCE)
    two = denoise(two_device_velocity(pipe.transformer, pipe.unconditional_transformer, conditioning, "cpu", "cpu"), z, times(), GUIDANCE)
    assert torch.equal(one, two)
    assert (one - z).abs().mean() > 0.1  # the DiTs did move the latents
    chosen = cfg_velocity(pipe.transformer, pipe.unconditional_transformer, conditioning, pipe.memory, parse_devices("cpu"))
    assert torch.equal(denoise(chosen, z, times(), GUIDANCE), one)  # one device: the ordinary velocity


@torch.inference_mode()
def test_guidance_one_skips_the_unconditional_dit(pipe):
    conditioning, z = conditioning_and_noise(pipe)
    cond_calls, cond_hook = count_forwards(pipe.transformer)
    uncond_calls, uncond_hook = count_forwards(pipe.unconditional_transformer)
    try:
        denoise(two_device_velocity(pipe.transformer, pipe.unconditional_transformer, conditioning, "cpu", "cpu"),
                z, times(), GUIDANCE)
    finally:
        cond_hook.remove()
        uncond_hook.remove()
    assert (len(cond_calls), len(uncond_calls)) == (4, 2)


@pytest.mark.parametrize("merge", [False, True])
def test_loras_on_each_dit_and_pass_scoped_scales_match_the_single_device_velocity(pipe, tiny_repos, tmp_path, merge):
    style = write_comfyui(tmp_path / "style.safetensors", fused_truth(seed=3, rank=4, alpha=4.0))
    negative = write_comfyui(tmp_path / "negative.safetensors", fused_truth(seed=8, rank=2, alpha=2.0))
    pipe.load_lora(style, scale=0.8, merge=merge)
    pipe.load_lora(negative, scale=0.5, target="unconditional_transformer", merge=merge)
    try:
        with torch.inference_mode():
            conditioning, z = conditioning_and_noise(pipe)
            one = denoise(dit_pair_velocity(pipe.transformer, pipe.unconditional_transformer, conditioning, pipe.memory),
                          z, times(), GUIDANCE)
            two = denoise(two_device_velocity(pipe.transformer, pipe.unconditional_transformer, conditioning, "cpu", "cpu"),
                          z, times(), GUIDANCE)
        assert torch.equal(one, two)
    finally:
        pipe.unload_lora()

    single = load_pipeline(tiny_repos["bf16"], memory="cpu", unconditional="lora")
    single.load_lora(style, scale=0.8)
    single.load_lora(negative, target="unconditional_lora")
    scales = single._pass_scales()
    assert scales is not None
    with torch.inference_mode():
        conditioning, z = conditioning_and_noise(single, unconditional=single.transformer)
        one = denoise(dit_pair_velocity(single.transformer, single.transformer, conditioning, single.memory, scales), z, times(), GUIDANCE)
        two = denoise(two_device_velocity(single.transformer, single.transformer, conditioning, "cpu", "cpu", scales), z, times(), GUIDANCE)
        unscoped = denoise(two_device_velocity(single.transformer, single.transformer, conditioning, "cpu", "cpu"), z, times(), GUIDANCE)
    assert torch.equal(one, two)
    assert not torch.equal(one, unscoped)  # the scales did change the passes
    with pytest.raises(ValueError, match="one DiT serving both passes"):
        two_device_velocity(single.transformer, single.transformer, conditioning, "cpu", "meta")


def test_device_lists_are_checked_with_precise_errors(monkeypatch):
    assert parse_devices("cpu") == (torch.device("cpu"),)
    assert parse_devices([torch.device("cpu")]) == (torch.device("cpu"),)
    cases = {
        "": "none given",
        "cuda:0,gpu1": "'gpu1' is not a device name",
        "cuda:0,": "'' is not a device name",
        "cuda:0,cuda:1,cuda:2": "3 devices named; CFG-parallel uses at most 2",
        "cuda:1,cuda:1": "cuda:1 is named twice",
        "cuda,cuda:0": "cuda:0 is named twice",  # "cuda" means cuda:0
        "cpu,cuda:0": "cpu is not a CUDA GPU",
    }
    for spec, message in cases.items():
        with pytest.raises(DeviceError, match=message):
            parse_devices(spec)
    # The device count is the machine's; these runs need GPUs this machine may not have, so the count is set.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(DeviceError, match=r"cuda:0 does not exist; this machine has no CUDA GPU"):
        parse_devices("cuda:0,cuda:1")
    assert parse_devices("auto") == (torch.device("cpu"),) == parse_devices(None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"cuda:1 does not exist; this machine has 1 CUDA GPU \(cuda:0\)"):
        parse_devices("cuda:0,cuda:1")
    assert parse_devices("auto") == (torch.device("cuda", 0),)  # the one-GPU fallback
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"cuda:2 does not exist; this machine has 2 CUDA GPUs \(cuda:0, cuda:1\)"):
        parse_devices("cuda:2,cuda:0")
    assert parse_devices("auto") == parse_devices(" cuda:0 , cuda:1 ") == (torch.device("cuda", 0), torch.device("cuda", 1))


def test_placement_refuses_a_pipeline_with_one_dit(pipe):
    with pytest.raises(ValueError, match="needs an unconditional_transformer"):
        place_for_cfg_parallel(transformer=pipe.transformer, unconditional=None, text_encoder=pipe.text_encoder,
                               vae=pipe.vae, devices=(torch.device("cpu"), torch.device("cpu")))
    with pytest.raises(DeviceError, match="exactly two devices"):
        place_for_cfg_parallel(transformer=pipe.transformer, unconditional=pipe.unconditional_transformer,
                               text_encoder=pipe.text_encoder, vae=pipe.vae, devices=(torch.device("cpu"),))


# ----- two processes ------------------------------------------------------------------------------
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _rank(rank: int, store: str, repo: str, passes: dict, z: torch.Tensor, out: str) -> None:
    """One rank of the velocity test: its own DiT from the repo, the parent's layouts and latents."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        subfolder = "transformer" if rank == 0 else "unconditional_transformer"
        dit = load_transformer(repo, dtype=torch.float32, subfolder=subfolder)
        calls, _ = count_forwards(dit)
        layout, text_hidden = passes[rank]
        with torch.inference_mode():
            final = denoise(distributed_cfg_velocity(dit, layout, "cpu", text_hidden), z, times(), GUIDANCE)
        torch.save({"z": final, "calls": len(calls)}, Path(out) / f"rank{rank}.pt")
        dist.barrier()  # both ranks done with every collective before either tears gloo down
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_keep_the_single_process_latents(pipe, tiny_repos, tmp_path):
    with torch.no_grad():
        conditioning, z = conditioning_and_noise(pipe)
        expected = denoise(dit_pair_velocity(pipe.transformer, pipe.unconditional_transformer, conditioning, pipe.memory),
                           z, times(), GUIDANCE)
    passes = {0: (conditioning.conditional, conditioning.text_hidden.contiguous()), 1: (conditioning.unconditional, None)}
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tiny_repos["bf16"]), passes, z, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert torch.equal(ranks[0]["z"], ranks[1]["z"])  # both ranks hold the same latents
    print(f"\nmax |latent difference| two gloo processes vs one: {(ranks[0]['z'] - expected).abs().max().item():.2e}")
    assert torch.allclose(ranks[0]["z"], expected, rtol=1e-5, atol=1e-5), (ranks[0]["z"] - expected).abs().max()
    assert [r["calls"] for r in ranks] == [4, 2]  # rank 1 sits out the g = 1 steps


def torchrun(*args: str, port: int, timeout: float = 150) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    return subprocess.run([*launcher, "-m", "ideogram_app.speed.cfg_parallel", *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_torchrun_command_makes_the_single_process_image(tiny_repo, tmp_path):
    out = tmp_path / "fox.png"
    result = torchrun("--model", str(tiny_repo), "--prompt", PROMPT, "--output", str(out), "--size", f"{WIDTH}x{HEIGHT}",
                      "--preset", "turbo", "--steps", "3", "--seed", "7", "--dtype", "float32", "--device", "cpu",
                      port=31500 + os.getpid() % 1000)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"saved {out} (seed 7)" in result.stdout
    reference = load_pipeline(tiny_repo, memory="cpu")
    expected = reference(PROMPT, seed=7, width=WIDTH, height=HEIGHT, preset="turbo", num_inference_steps=3)
    made = read_image_metadata(out)
    assert made == read_image_metadata(expected)
    with Image.open(out) as image:
        difference = (pixels(image) - pixels(expected)).abs()
    print(f"\nmax |pixel difference| two processes vs one: {difference.max().item()}")
    assert difference.max() <= 1


def test_a_prompt_refused_on_rank_0_stops_both_ranks_with_one_message(tiny_repo, tmp_path):
    """Only rank 0 has the tokenizer; its refusal must reach rank 1, which would otherwise wait forever."""
    result = torchrun("--model", str(tiny_repo), "--prompt", "fox " * 3000, "--output", str(tmp_path / "x.png"),
                      "--dtype", "float32", "--device", "cpu", port=32500 + os.getpid() % 1000, timeout=90)
    assert result.returncode != 0 and not (tmp_path / "x.png").exists()
    assert result.stderr.count("error: ") == 1 and "2048" in result.stderr, result.stderr[-2000:]


def test_the_command_refuses_what_it_cannot_do_before_starting_a_process_group(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    assert main(["--model", "m", "--prompt", "p", "--output", "o.png"]) == 2
    assert "torchrun --nproc-per-node 2" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--model", "m", "--prompt", "p", "--output", "o.png", "--edit-region", "0,0,500,500"]) == 2
    assert "--edit-region is not available with two processes" in capsys.readouterr().err
    assert main(["--model", "m", "--caption", "p", "--out", "o.png", "--size", "100x64"]) == 2  # generate's checks
    assert "--size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "m", "--prompt", "p", "--output", "o.png", "--memory", "offload"])


# ----- two GPUs -----------------------------------------------------------------------------------
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@pytest.mark.parametrize("layout, mode", [("bf16", "eager"), ("fp8", "eager"), ("bf16", "exact")])
@pytest.mark.gpu
@needs_two_gpus
def test_two_gpus_give_the_one_gpu_latents_without_host_syncs(tiny_repos, layout, mode):
    torch.backends.cuda.matmul.allow_tf32 = False
    one = load_pipeline(tiny_repos[layout], device="cuda:0", mode=mode)
    two = load_pipeline(tiny_repos[layout], device="cuda:0", mode=mode)
    devices = parse_devices("cuda:0,cuda:1")
    plan = place_for_cfg_parallel(transformer=two.transformer, unconditional=two.unconditional_transformer,
                                  text_encoder=two.text_encoder, vae=two.vae, devices=devices)
    assert next(two.unconditional_transformer.parameters()).device == devices[1]
    with torch.inference_mode():
        conditioning, z = conditioning_and_noise(one)
        z = z.to("cuda:0")
        expected = denoise(dit_pair_velocity(one.transformer, one.unconditional_transformer, conditioning, one.memory), z, times(), GUIDANCE)
        conditioning, _ = conditioning_and_noise(two)
        velocity = cfg_velocity(two.transformer, two.unconditional_transformer, conditioning, plan, devices)
        denoise(velocity, z, times(), GUIDANCE)  # warm-up (allocator, kernels)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host synchronisation inside the loop raises
        try:
            got = denoise(velocity, z, times(), GUIDANCE)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    print(f"\nmax |latent difference| two GPUs vs one ({layout}, {mode}): {(got - expected).abs().max().item():.3e}")
    assert got.device == devices[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_two_gpus
def test_torchrun_on_two_gpus_with_nccl_makes_the_one_gpu_image(tiny_repo, tmp_path):
    out = tmp_path / "fox.png"
    result = torchrun("--model", str(tiny_repo), "--prompt", PROMPT, "--output", str(out), "--size", f"{WIDTH}x{HEIGHT}",
                      "--preset", "turbo", "--steps", "3", "--seed", "7", "--dtype", "float32", "--device", "cuda",
                      "--mode", "eager", port=33500 + os.getpid() % 1000)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = load_pipeline(tiny_repo, device="cuda:0", mode="eager")
    expected = reference(PROMPT, seed=7, width=WIDTH, height=HEIGHT, preset="turbo", num_inference_steps=3)
    with Image.open(out) as image:
        difference = (pixels(image) - pixels(expected)).abs()
    print(f"\nmax |pixel difference| two GPU processes vs one GPU: {difference.max().item()}")
    assert difference.max() <= 1


def released_size_dit(device: str) -> torch.nn.Module:
    """The released DiT shape with random bf16 weights, made on the device (no checkpoint)."""
    from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT

    with torch.device("meta"):
        dit = Ideogram4DiT(Ideogram4Config()).to(torch.bfloat16)
    dit = dit.to_empty(device=device)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    return dit.eval().requires_grad_(False)


@pytest.mark.gpu
@needs_two_gpus
def test_the_two_passes_overlap_on_released_sizes():
    """The point of the feature: at 1024² with a 900-token caption (eager, bf16), a guided step on two
    GPUs takes about as long as the longer pass alone, not as long as both."""
    from ideogram_app.pipeline.placement import MemoryPlan

    transformer, unconditional = released_size_dit("cuda:0"), released_size_dit("cuda:0")
    plan = MemoryPlan.on(torch.device("cuda:0"))
    features = torch.randn(1, 900, transformer.cfg.llm_features_dim, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 64 * 64, 128, device="cuda:0")

    def ms_per_step(velocity, sync=("cuda:0",)) -> float:
        for _ in range(2):
            velocity(z, 0.5, 7.0)
        for device in sync:
            torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            velocity(z, 0.5, 7.0)
        end.record()
        end.synchronize()  # the step's result is on cuda:0, after both passes
        return start.elapsed_time(end) / 5

    with torch.inference_mode():
        conditioning = prepare_conditioning(transformer, unconditional, features, 64, 64, 1, plan)
        single = dit_pair_velocity(transformer, unconditional, conditioning, plan)
        one_gpu = ms_per_step(single)
        conditional_only = ms_per_step(lambda z_, t, g: single(z_, t, 1.0))  # g = 1: the conditional pass alone
        unconditional.to("cuda:1")
        two_gpus = ms_per_step(two_device_velocity(transformer, unconditional, conditioning, "cuda:0", "cuda:1"),
                               sync=("cuda:0", "cuda:1"))
    print(f"\nguided step at 1024², eager bf16: one GPU {one_gpu:.1f} ms, two GPUs {two_gpus:.1f} ms "
          f"({one_gpu / two_gpus:.2f}x); conditional pass alone {conditional_only:.1f} ms")
    assert two_gpus < 0.8 * one_gpu
