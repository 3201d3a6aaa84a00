"""The trainer on a CUDA device with bitsandbytes: a LoRA beside NF4 linears, and 8-bit AdamW; plus a
one-process DeepSpeed ZeRO-2 run when deepspeed is installed.

Marked `gpu`; skipped without CUDA or without bitsandbytes (deepspeed: without deepspeed). Run on the
GPU machine:  python -m pytest tests/train/test_gpu.py -m gpu -q -s
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ideogram_app.lora.layer import LoraLinear
from ideogram_app.train.adapters import ADAPTER
from ideogram_app.train.checkpoints import LORA_FILE, step_folder
from ideogram_app.train.loop import epoch_batches, make_batch, optimizer_step
from ideogram_app.train.objective import flow_matching_loss
from tests.fixtures.tiny_dit import DIT_FILE, write_tiny_dit
from tests.fixtures.tiny_repo import COND_SEED
from tests.fixtures.tiny_text_encoder import LLM_FEATURES_DIM
from tests.train.conftest import ROOT, lora_args, prepared, run_subprocess

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"),
]
# Per factor, |g - g_ref| / |g_ref| (Frobenius). Both sides compute in bf16, but bitsandbytes runs its
# one-row products (the adaLN modulations, one row per sample) through its own 4-bit GEMV kernel and its
# backward through its own matmul, so values differ by bf16 roundings carried through the blocks:
# measured up to 3.2% on the first block's factors on an H200 (loss equal to 5e-4); a wrong gradient is off by O(1).
GRAD_TOLERANCE = 5e-2


def _copy_repo(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    shutil.rmtree(target / "transformer")
    return target


@pytest.fixture(scope="module")
def nf4_repos(tiny_repos, tmp_path_factory) -> tuple[Path, Path]:
    """(NF4 repo, dense repo): the tiny bf16 repo with its conditional DiT quantised to NF4 by
    bitsandbytes (adaln_dim 64: every in-dim a multiple of the 64-block, as in the real model), and the
    same repo whose DiT holds exactly the bf16 weights bitsandbytes dequantises those NF4 blocks to."""
    import bitsandbytes.functional as bnbf

    root = tmp_path_factory.mktemp("nf4")
    nf4 = _copy_repo(tiny_repos["bf16"], root / "nf4")
    file = write_tiny_dit(nf4, "nf4", seed=COND_SEED, llm_features_dim=LLM_FEATURES_DIM, adaln_dim=64, nf4_device="cuda")
    raw = load_file(file)
    dense_state = {}
    for key, value in raw.items():
        if key.endswith(".quant_state.bitsandbytes__nf4"):
            name = key[: -len(".weight.quant_state.bitsandbytes__nf4")]
            prefix = name + ".weight."
            stats = {k[len(prefix):]: v.cuda() for k, v in raw.items() if k.startswith(prefix)}
            state = bnbf.QuantState.from_dict(stats, device=torch.device("cuda"))
            dense_state[name + ".weight"] = bnbf.dequantize_4bit(raw[name + ".weight"].cuda(), state).to(torch.bfloat16).cpu()
    for key, value in raw.items():
        name = key.split(".weight")[0]
        if name + ".weight" not in dense_state:
            dense_state[key] = value
    dense = _copy_repo(tiny_repos["bf16"], root / "dense")
    (dense / "transformer").mkdir()
    save_file(dense_state, dense / "transformer" / DIT_FILE)
    shutil.copy(file.parent / "config.json", dense / "transformer" / "config.json")
    return nf4, dense


def _tensors(value) -> set[torch.dtype]:
    """The dtypes of every tensor inside nested dicts/lists (bitsandbytes nests its 8-bit state)."""
    if isinstance(value, torch.Tensor):
        return {value.dtype}
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return set().union(*map(_tensors, value)) if value else set()
    return set()


def _first_batch(run):
    items = epoch_batches([s.size for s in run.inputs.dataset.samples], 1, 1, run.config.seed, 0)[0]
    return make_batch(run, items, 0)


def _trained(run) -> dict[str, LoraLinear]:
    return {n: m for n, m in run.dit.named_modules() if isinstance(m, LoraLinear) and ADAPTER in m.adapters}


def _frozen_state(dit) -> dict[str, torch.Tensor]:
    """Every stored tensor of the base (NF4 packed data and statistics included), as a copy."""
    trained = {name for name, param in dit.named_parameters() if param.requires_grad}
    state = {k: v.detach().clone() for k, v in dit.state_dict().items() if k not in trained}
    assert len(state) < len(dit.state_dict())
    return state


def test_lora_on_an_nf4_base_matches_the_dequantised_bf16_model_learns_and_leaves_the_base_alone(
        nf4_repos, dataset, cache_dir, tmp_path):
    import bitsandbytes as bnb

    nf4_repo, dense_repo = nf4_repos
    extra = ("--dtype", "bfloat16", "--learning_rate", "2e-3")
    nf4_run = prepared(lora_args(nf4_repo, dataset, tmp_path / "nf4", cache_dir, *extra))
    dense_run = prepared(lora_args(dense_repo, dataset, tmp_path / "dense", cache_dir, *extra))
    nf4_layers, dense_layers = _trained(nf4_run), _trained(dense_run)
    assert nf4_layers.keys() == dense_layers.keys() and len(nf4_layers) == 2 * 6 + 1
    assert all(isinstance(layer.base, bnb.nn.Linear4bit) for layer in nf4_layers.values())
    assert all(type(layer.base) is torch.nn.Linear for layer in dense_layers.values())
    for layer in dense_layers.values():  # the same layer code on both sides: only the base differs
        del layer.forward  # the trainer's lean forward (checked against this one in test_parts.py)

    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # B = 0 at the start; the same non-zero B on both so that both factors get a gradient
        for name, layer in nf4_layers.items():
            up = torch.randn(layer.adapters[ADAPTER].up.shape, generator=generator) * 0.05
            layer.adapters[ADAPTER].up.copy_(up)
            dense_layers[name].adapters[ADAPTER].up.copy_(up)
    before = _frozen_state(nf4_run.dit)

    # One forward/backward of the same batch (same latents, projected text, t and noise) on both models.
    batch = _first_batch(nf4_run)
    losses = {}
    for label, run in (("nf4", nf4_run), ("dense", dense_run)):
        loss = flow_matching_loss(run.model, run.dit, batch)
        loss.backward()
        losses[label] = loss.item()
    worst = worst_element = 0.0
    for name, layer in nf4_layers.items():
        for role in ("down", "up"):
            got = getattr(layer.adapters[ADAPTER], role).grad
            want = getattr(dense_layers[name].adapters[ADAPTER], role).grad
            assert got.dtype == torch.float32 and want.abs().max() > 0, (name, role)
            error = ((got - want).norm() / want.norm()).item()
            worst = max(worst, error)
            worst_element = max(worst_element, ((got - want).abs().max() / want.abs().max()).item())
            assert error <= GRAD_TOLERANCE, (name, role, error)
    print(f"\nNF4 base vs bf16 holding the dequantised weights: loss {losses['nf4']:.6f} vs {losses['dense']:.6f}, "
          f"LoRA gradients: largest |g - g_ref| / |g_ref| {worst:.2e} (largest element error / largest element {worst_element:.2e})")
    assert losses["nf4"] == pytest.approx(losses["dense"], rel=1e-2)
    nf4_run.optimizer.zero_grad(set_to_none=True)

    # Real optimiser steps (clipping, AdamW, schedule) on that batch: the loss falls.
    steps = [optimizer_step(nf4_run, lambda a: batch, 1)[0] for _ in range(8)]
    print("NF4 base, 8 steps on one batch: losses " + " ".join(f"{x:.4f}" for x in steps))
    assert steps[-1] < 0.9 * steps[0]

    after = _frozen_state(nf4_run.dit)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])][:3]


def test_an_nf4_checkpoint_trains_a_lora_through_the_cli(nf4_repos, dataset, cache_dir, tmp_path):
    """The flag path: `--model` naming a repo whose transformer/ is an NF4 checkpoint."""
    output = tmp_path / "out"
    result = run_subprocess(lora_args(nf4_repos[0], dataset, output, cache_dir, "--dtype", "bfloat16", "--max_steps", "4"),
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["peak_mem_gib"] > 0 for r in rows)
    assert json.loads((output / "run.json").read_text())["status"] == "finished"
    lora = load_file(output / LORA_FILE)
    ups = [v for k, v in lora.items() if k.endswith(".lora_B.weight")]
    assert len(ups) == 2 * 6 + 1 and any(up.abs().max() > 0 for up in ups)


def test_adamw8bit_keeps_8bit_state_and_lowers_the_loss(tiny_repos, dataset, cache_dir, tmp_path):
    import bitsandbytes as bnb

    # rank 64: every factor has at least 4096 elements, bitsandbytes' threshold for 8-bit state
    run = prepared(lora_args(tiny_repos["bf16"], dataset, tmp_path / "out", cache_dir, "--dtype", "bfloat16",
                             "--optimizer", "adamw8bit", "--lora_rank", "64", "--learning_rate", "1e-3"))
    inner = getattr(run.optimizer, "optimizer", run.optimizer)
    assert isinstance(inner, bnb.optim.AdamW8bit)
    batch = _first_batch(run)
    losses = [optimizer_step(run, lambda a: batch, 1)[0] for _ in range(8)]
    print("\nadamw8bit, 8 steps on one batch: losses " + " ".join(f"{x:.4f}" for x in losses))
    states = [s for s in inner.state.values() if "state1" in s]
    # factors under 4096 elements (final_layer.adaln_modulation's A) keep 32-bit state, as bitsandbytes decides
    assert sum(s["state1"].dtype == torch.uint8 for s in states) >= 2 * 6
    assert losses[-1] < 0.8 * losses[0]


def test_adamw8bit_run_writes_checkpoints_through_the_cli(tiny_repos, dataset, cache_dir, tmp_path):
    output = tmp_path / "out"
    result = run_subprocess(lora_args(tiny_repos["bf16"], dataset, output, cache_dir, "--dtype", "bfloat16",
                                      "--optimizer", "adamw8bit", "--lora_rank", "64", "--max_steps", "3"),
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _tensors(torch.load(step_folder(output, 3) / "optimizer.pt", weights_only=False)) & {torch.uint8}
    assert (output / LORA_FILE).is_file()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_deepspeed_zero2_config_runs_a_lora(tiny_repos, dataset, cache_dir, tmp_path):
    """The shipped ZeRO-2 config (DiffSynth's settings), one process: the run finishes and writes a LoRA."""
    output = tmp_path / "out"
    config = ROOT / "ideogram_app" / "train" / "accelerate_configs" / "deepspeed_zero2.yaml"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "1"]
    result = run_subprocess(lora_args(tiny_repos["bf16"], dataset, output, cache_dir, "--dtype", "bfloat16", "--max_steps", "4",
                                      "--gradient_accumulation_steps", "2", "--dataset_repeat", "2"),
                            launcher=launcher, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    record = json.loads((output / "run.json").read_text())
    print(f"\nDeepSpeed ZeRO-2, 1 process: losses {[round(r['loss'], 4) for r in rows]}, grad norms "
          f"{[round(r['grad_norm'], 4) for r in rows]}")
    assert record["status"] == "finished" and record["distributed"] == "DEEPSPEED"
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert (output / LORA_FILE).is_file()
