"""The optional pieces on a machine without them: 8-bit AdamW without bitsandbytes, a DeepSpeed launch
without deepspeed, an NF4 checkpoint without CUDA. Each is named before anything is written; the runs
themselves are in test_gpu.py."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ideogram_app.train.cli import main
from tests.fixtures.tiny_dit import DIT_FILE
from tests.train.conftest import base_args, lora_args, write_dataset

NO_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is None


@pytest.fixture
def data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


def fails(args: list[str], capsys, output: Path) -> str:
    assert main(args) == 2
    assert not output.exists(), f"{output} was written: {list(output.rglob('*'))}"
    return capsys.readouterr().err


@pytest.mark.skipif(not NO_BITSANDBYTES, reason="bitsandbytes is installed here")
def test_adamw8bit_without_bitsandbytes_is_named(tiny_repos, data, tmp_path, capsys):
    err = fails(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache", "--optimizer", "adamw8bit"),
                capsys, tmp_path / "out")
    assert "error: --optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes), which is not installed" in err


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_a_deepspeed_launch_without_deepspeed_is_named(tiny_repos, data, tmp_path, capsys, monkeypatch):
    # what `accelerate launch --config_file <a DEEPSPEED config>` tells each process
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    err = fails(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache"), capsys, tmp_path / "out")
    assert "the accelerate config selects DeepSpeed (distributed_type: DEEPSPEED), but deepspeed is not installed" in err
    assert "pip install deepspeed" in err and "ddp_lora.yaml" in err


def test_shipped_deepspeed_config_is_diffsynths_zero2_without_autocast():
    from importlib.resources import files

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(files("ideogram_app.train") / "accelerate_configs" / "deepspeed_zero2.yaml"))
    assert config.distributed_type.value == "DEEPSPEED" and config.mixed_precision == "no"
    assert config.deepspeed_config == {"gradient_accumulation_steps": 1, "offload_optimizer_device": "none",
                                       "offload_param_device": "none", "zero3_init_flag": False, "zero_stage": 2}


@pytest.fixture
def nf4_marked_repo(tiny_repos, tmp_path) -> Path:
    """The tiny bf16 repo whose transformer file also carries an NF4 statistics key: the headers are all
    the trainer reads before refusing, and a real NF4 file needs bitsandbytes on CUDA to write."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repos["bf16"], repo)
    file = repo / "transformer" / DIT_FILE
    tensors = load_file(file)
    tensors["layers.0.attention.qkv.weight.quant_state.bitsandbytes__nf4"] = torch.zeros(8, dtype=torch.uint8)
    save_file(tensors, file)
    return repo


@pytest.mark.skipif(torch.cuda.is_available() and not NO_BITSANDBYTES, reason="NF4 runs here")
def test_an_nf4_checkpoint_without_cuda_or_bitsandbytes_is_named(nf4_marked_repo, data, tmp_path, capsys):
    err = fails(lora_args(nf4_marked_repo, data, tmp_path / "out", tmp_path / "cache"), capsys, tmp_path / "out")
    assert f"the transformer {nf4_marked_repo / 'transformer'} holds bitsandbytes NF4 weights" in err


def test_an_nf4_checkpoint_is_refused_for_a_full_fine_tune_and_fp8(nf4_marked_repo, data, tmp_path, capsys):
    err = fails(base_args(nf4_marked_repo, data, tmp_path / "out", tmp_path / "cache", "--trainable_models", "dit"),
                capsys, tmp_path / "out")
    assert "holds NF4 weights, which cannot be trained; a full fine-tune (--trainable_models dit) needs the bf16 checkpoint" in err
    err = fails(lora_args(nf4_marked_repo, data, tmp_path / "out", tmp_path / "cache", "--fp8_models", "dit"),
                capsys, tmp_path / "out")
    assert "--fp8_models dit: the transformer" in err and "is already quantised (NF4)" in err
