"""Checkpoints (everything `--resume` needs) and the final outputs.

A checkpoint is `checkpoints/step-NNNNNNN/` in the run folder:

- the trainable weights, in a layout our loaders read: `lora.safetensors` (native LoRA layout, fp32)
  or `transformer/diffusion_pytorch_model.safetensors` + `config.json` (a full fine-tune);
- `optimizer.pt` (keyed by parameter name, gathered from every process), `state.json` (step, epoch,
  position in the epoch, scheduler state, the settings that must not change on resume) and one
  `rng-<rank>.pt` per process.

It is assembled in a hidden temporary folder and renamed into place, so a kill at any moment leaves
either the whole checkpoint or none; the oldest beyond `--keep_checkpoints` are deleted afterwards.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ideogram_app.lora import write_diffusers, write_native
from ideogram_app.train.adapters import load_trained, trained_modules
from ideogram_app.train.records import write_json_atomic

FOLDER = "checkpoints"
LORA_FILE = "lora.safetensors"
LORA_DIFFUSERS_FILE = "lora.diffusers.safetensors"
DIT_FILE = "diffusion_pytorch_model.safetensors"
_NAME = re.compile(r"^step-(\d+)$")
# Settings that decide what a step computes: a resumed run must keep them (the others, such as
# --max_steps, --save_steps or the validation flags, may change).
FIXED_ON_RESUME = ("dataset_base_path", "dataset_metadata_path", "dataset_repeat", "height", "width", "max_pixels",
                   "trigger", "trigger_field", "dtype", "fp8_models", "trainable_models", "lora_base_model",
                   "lora_target_modules", "lora_rank", "lora_alpha", "preset_lora_path", "batch_size", "seed",
                   "logit_mean", "logit_std", "optimizer", "weight_decay")

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def step_folder(output: Path, step: int) -> Path:
    return Path(output) / FOLDER / f"step-{step:07d}"


def completed(output: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    folder = Path(output) / FOLDER
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def remove_partial(output: Path) -> None:
    """Temporary folders left by a killed run."""
    folder = Path(output) / FOLDER
    if folder.is_dir():
        for leftover in folder.glob(".step-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def resolve_resume(output: Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not (path / "state.json").is_file():
            raise ValueError(f"--resume {resume}: not a checkpoint folder (no state.json)")
        return path
    found = completed(output)
    if not found:
        raise ValueError(f"--resume latest: {Path(output) / FOLDER} holds no checkpoint yet")
    return found[-1]


def write_transformer(folder: Path, state: dict[str, torch.Tensor], dit: nn.Module) -> Path:
    """The bf16-repackage component layout: `transformer/diffusion_pytorch_model.safetensors` + config."""
    target = Path(folder) / "transformer"
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, target / DIT_FILE)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(dit.cfg).items()}
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return target


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimiser itself, also when Accelerate wrapped it."""
    return getattr(optimizer, "optimizer", optimizer)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run, step: int, epoch: int, step_in_epoch: int) -> Path:
    """Collective: every process calls it. Returns the checkpoint folder."""
    acc = run.accelerator
    final = step_folder(run.output, step)
    temporary = final.with_name(f".{final.name}.tmp")
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    # ZeRO-2 keeps whole weights in the plain module; its optimiser state is DeepSpeed's, partitioned per
    # process, and is not written (such checkpoints cannot be resumed: docs/training.md).
    model_state = None if run.lora else get_model_state_dict(run.dit if deepspeed else run.model, options=FULL)
    optimizer_state = None if deepspeed else get_optimizer_state_dict(run.model, _inner(run.optimizer), options=FULL)
    if acc.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(_rng_state(), temporary / f"rng-{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        if run.lora:
            write_native(temporary / LORA_FILE, trained_modules(run.dit, run.alpha), base_model=run.model_name, steps=step)
        else:
            write_transformer(temporary, model_state, run.dit)
        if optimizer_state is not None:
            torch.save(optimizer_state, temporary / "optimizer.pt")
        write_json_atomic(temporary / "state.json", {
            "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "world_size": acc.num_processes,
            "scheduler": run.scheduler.state_dict(), "settings": {k: run.settings[k] for k in FIXED_ON_RESUME},
            "gradient_accumulation_steps": run.settings["gradient_accumulation_steps"],
        })
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in completed(run.output)[: -run.keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(run, folder: Path) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler and RNG; returns state.json (step and data position)."""
    state = json.loads((folder / "state.json").read_text())
    changed = [k for k in FIXED_ON_RESUME if state["settings"].get(k) != run.settings[k]]
    if changed:
        raise ValueError(f"--resume {folder}: the checkpoint was made with different " + ", ".join(
            f"--{k} ({state['settings'].get(k)!r}, now {run.settings[k]!r})" for k in changed))
    per_step = state["world_size"] * state["gradient_accumulation_steps"]
    now = run.accelerator.num_processes * run.settings["gradient_accumulation_steps"]
    if per_step != now:
        raise ValueError(f"--resume {folder}: made with processes x --gradient_accumulation_steps = {per_step} batches per "
                         f"optimiser step, now {now}; the data order would not continue")
    if not (folder / "optimizer.pt").is_file():
        raise ValueError(f"--resume {folder}: no optimizer.pt (a DeepSpeed run's checkpoint); it cannot continue exactly. "
                         "Start a new run with --lora_checkpoint (LoRA) or --model pointing at its transformer/")
    if run.lora:
        load_trained(run.dit, load_file(folder / LORA_FILE))
    else:
        set_model_state_dict(run.model, load_file(folder / "transformer" / DIT_FILE),
                             options=StateDictOptions(full_state_dict=True, strict=True))
    set_optimizer_state_dict(run.model, _inner(run.optimizer), torch.load(folder / "optimizer.pt", weights_only=False),
                             options=StateDictOptions(full_state_dict=True))
    run.scheduler.load_state_dict(state["scheduler"])
    rng = folder / f"rng-{run.accelerator.process_index}.pt"
    _set_rng_state(torch.load(rng if rng.is_file() else folder / "rng-0.pt", weights_only=False))
    return state


def write_outputs(run, step: int, trigger: str | None) -> list[Path]:
    """The final LoRA file(s) or transformer/ folder in the run folder. Collective (a sharded full
    fine-tune is gathered first); the main process writes."""
    output = Path(run.output)
    written = []
    deepspeed = run.accelerator.distributed_type == DistributedType.DEEPSPEED
    state = None if run.lora else get_model_state_dict(run.dit if deepspeed else run.model, options=FULL)
    if not run.accelerator.is_main_process:
        return written
    if run.lora:
        modules = trained_modules(run.dit, run.alpha)
        words = [trigger] if trigger else None
        for fmt, name, writer in (("native", LORA_FILE, write_native), ("diffusers", LORA_DIFFUSERS_FILE, write_diffusers)):
            if run.settings["save_format"] in (fmt, "both"):
                temporary = output / f".{name}.tmp"
                writer(temporary, modules, base_model=run.model_name, trigger_words=words, steps=step)
                os.replace(temporary, output / name)
                written.append(output / name)
        return written
    temporary = output / ".transformer.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    write_transformer(temporary, state, run.dit)
    if (output / "transformer").exists():
        shutil.rmtree(output / "transformer")
    os.replace(temporary / "transformer", output / "transformer")
    shutil.rmtree(temporary, ignore_errors=True)
    return [output / "transformer"]
