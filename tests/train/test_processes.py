"""The trainer as real processes: 2 processes (gloo) equal 1 process with 2 accumulation steps; a run
killed with SIGKILL resumes to exactly the uninterrupted result; SIGTERM stops cleanly with a checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ideogram_app.train.cli import main
from ideogram_app.train.records import read_metrics
from tests.train.conftest import ROOT, lora_args, run_subprocess, subprocess_env, train_subprocess


def wait_for_steps(output: Path, count: int, process, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(read_metrics_safely(output)) < count:
        if process.poll() is not None:
            raise AssertionError(f"the run ended early ({process.returncode}): {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("the run made no progress")
        time.sleep(0.02)


def read_metrics_safely(output: Path) -> list[dict]:
    try:
        return read_metrics(output)
    except json.JSONDecodeError:  # a line being written right now
        return []


def lora_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "lora.safetensors")


def test_two_processes_equal_one_process_with_two_accumulation_steps(tiny_repos, dataset, cache_dir, tmp_path):
    steps = "3"  # 4 batches per epoch, 2 per step: crosses an epoch boundary
    assert main(lora_args(tiny_repos["bf16"], dataset, tmp_path / "one", cache_dir, "--max_steps", steps,
                          "--gradient_accumulation_steps", "2")) == 0
    env_launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000)]
    os.environ["ACCELERATE_USE_CPU"] = "1"  # accelerate's switch for multi-process CPU (gloo)
    try:
        two = run_subprocess(lora_args(tiny_repos["bf16"], dataset, tmp_path / "two", cache_dir, "--max_steps", steps), launcher=env_launcher)
    finally:
        del os.environ["ACCELERATE_USE_CPU"]
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    print("\nlosses, 1 process x 2 accumulation:", [round(r["loss"], 6) for r in a])
    print("losses, 2 processes x 1:          ", [round(r["loss"], 6) for r in b])
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    wa, wb = lora_weights(tmp_path / "one"), lora_weights(tmp_path / "two")
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    print(f"max |weight difference| after {steps} steps: {worst:.2e}")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_resume_after_kill_9_equals_the_uninterrupted_run(tiny_repos, dataset, cache_dir, tmp_path, capsys):
    killed = tmp_path / "killed"
    process = train_subprocess(lora_args(tiny_repos["bf16"], dataset, killed, cache_dir, "--max_steps", "100000", "--save_steps", "3"))
    try:
        wait_for_steps(killed, 7, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    checkpoints = sorted((killed / "checkpoints").glob("step-*"))
    assert checkpoints and all((c / "state.json").is_file() for c in checkpoints)  # only whole checkpoints
    assert json.loads((killed / "run.json").read_text())["status"] == "running"  # the kill left no chance to say more
    last = int(checkpoints[-1].name.split("-")[1])
    total = str(last + 4)

    capsys.readouterr()
    assert main(lora_args(tiny_repos["bf16"], dataset, killed, cache_dir, "--max_steps", total, "--save_steps", "3",
                          "--resume", "latest")) == 0
    assert f"resumed from {checkpoints[-1]} at step {last}" in capsys.readouterr().err
    assert main(lora_args(tiny_repos["bf16"], dataset, tmp_path / "straight", cache_dir, "--max_steps", total, "--save_steps", "3")) == 0
    a, b = read_metrics(killed), read_metrics(tmp_path / "straight")
    assert [r["step"] for r in a] == list(range(1, int(total) + 1))  # no step twice, none missing
    print(f"\nkilled after step {last}'s checkpoint; losses resumed vs uninterrupted, last 4:",
          [round(r["loss"], 6) for r in a[-4:]], [round(r["loss"], 6) for r in b[-4:]])
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa, wb = lora_weights(killed), lora_weights(tmp_path / "straight")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((killed / "run.json").read_text())["status"] == "finished"


def test_sigterm_saves_a_checkpoint_and_stops(tiny_repos, dataset, cache_dir, tmp_path):
    output = tmp_path / "stopped"
    process = train_subprocess(lora_args(tiny_repos["bf16"], dataset, output, cache_dir, "--max_steps", "100000", "--save_steps", "1000"))
    wait_for_steps(output, 3, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    run = json.loads((output / "run.json").read_text())
    step = read_metrics(output)[-1]["step"]
    assert run["status"] == "stopped" and run["step"] == step and "--resume latest" in run["message"]
    assert [p.name for p in (output / "checkpoints").iterdir()] == [f"step-{step:07d}"]
    assert (output / "lora.safetensors").is_file()


def test_benchmark_smoke_runs_the_fsdp_full_fine_tune_on_two_gloo_processes(tmp_path):
    """benchmarks/train_multi_gpu.py --smoke --phase fsdp: the trainer's `prepare_model` and
    `optimizer_step` under Accelerate's own FSDP2 wrapping (the shipped fsdp_full.yaml), on 2 CPU
    processes, the only place FSDP runs without GPUs: shards, steps and lowers the loss."""
    out = tmp_path / "multi.jsonl"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(30500 + os.getpid() % 1000)]
    result = subprocess.run([*launcher, "benchmarks/train_multi_gpu.py", "--smoke", "--phase", "fsdp", "--out", str(out),
                             "--warmup", "1", "--steps", "2"],
                            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["distributed"] == "FSDP" and row["processes"] == 2 and row["smoke"]
    assert row["loss_last"] < row["loss_first"]
