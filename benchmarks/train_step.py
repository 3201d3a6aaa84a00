"""LoRA training step at the released shapes: seconds per optimiser step and peak GPU memory (one GPU).

Random weights (the released DiT config, 9.28 B parameters), one 1024x1024 sample (4096 image tokens)
with a 512-token caption already projected (what the trainer's text cache feeds), batch 1, rank 32 on
DiffSynth's targets (qkv, o, w1, w2, w3, adaln_modulation; 106.0 M fp32 parameters). The model is
prepared and stepped by the trainer's own code (`prepare_model`: lean LoRA layers, checkpointing,
fused AdamW, Accelerate; `optimizer_step`: loss, backward, clipping at 1.0, AdamW, schedule), with
the CUDA allocator set up as the trainer's command line sets it (expandable segments).

Configurations (`CONFIGS`): bf16 base without and with per-block gradient checkpointing; the base kept
as scaled fp8 (`Fp8Linear`, every Linear, the official fp8 files' layout) with checkpointing, with
the block inputs offloaded to pinned host memory (`--use_gradient_checkpointing_offload`), and with
the inference LoRA layer instead of the lean one (what the trainer ran before, for comparison). Each
writes one JSON line to --out: median s/step, peak memory allocated and reserved. Runs on CUDA only
— there is no CPU fallback — in about 2 minutes on an H200:

    python benchmarks/train_step.py --out results.jsonl

`--smoke` runs a 2-block, narrow model for a few steps to check the script itself (on any device,
named with --device); its numbers mean nothing. `train_multi_gpu.py` reuses the helpers below.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from ideogram_app.train.memory import prefer_expandable_segments  # noqa: E402

prefer_expandable_segments()  # as `python -m ideogram_app.train` does, before CUDA is touched

import torch  # noqa: E402

from ideogram_app.lora.layer import LoraLinear  # noqa: E402
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT  # noqa: E402
from ideogram_app.train import adapters  # noqa: E402
from ideogram_app.train.config import DIFFSYNTH_LORA_TARGETS, TrainConfig, as_dict  # noqa: E402
from ideogram_app.train.loop import Run, optimizer_step, prepare_model  # noqa: E402
from ideogram_app.train.memory import release_text_projection, store_fp8  # noqa: E402
from ideogram_app.train.objective import Batch  # noqa: E402


@dataclass(frozen=True)
class Variant:
    checkpointing: bool = False
    fp8: bool = False
    offload: bool = False
    inference_lora: bool = False  # the LoRA package's layer under autograd, not the trainer's lean one


CONFIGS = {
    "bf16": Variant(),
    "bf16+checkpointing": Variant(checkpointing=True),
    "fp8-kept+checkpointing": Variant(checkpointing=True, fp8=True),
    "fp8-kept+checkpointing+offload": Variant(checkpointing=True, fp8=True, offload=True),
    "fp8-kept+checkpointing+inference-lora": Variant(checkpointing=True, fp8=True, inference_lora=True),
}
SMOKE_CONFIG = dict(num_layers=2, emb_dim=512, num_heads=2, intermediate_size=256, adanln_dim=64, llm_features_dim=64)


def random_dit(cfg: Ideogram4Config, device: torch.device) -> Ideogram4DiT:
    """bf16 weights drawn on the device (N(0, 0.02), norms at 1), no host copy."""
    with torch.device("meta"):
        dit = Ideogram4DiT(cfg).to(torch.bfloat16)
    dit = dit.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    return dit.requires_grad_(False)


def make_batch(cfg: Ideogram4Config, size: int, text_tokens: int, device: torch.device, projected: bool = True) -> Batch:
    """One sample as the trainer's caches feed it: projected text rows (LoRA) or raw features (full
    fine-tune, where the projection trains)."""
    grid = size // 16
    generator = torch.Generator(device).manual_seed(1)
    n = grid * grid
    width = cfg.emb_dim if projected else cfg.llm_features_dim
    return Batch(
        latents=torch.randn(1, n, cfg.in_channels, device=device, generator=generator),
        noise=torch.randn(1, n, cfg.in_channels, device=device, generator=generator),
        times=torch.tensor([0.4], device=device),
        text=torch.randn(1, text_tokens, width, device=device, generator=generator).to(torch.bfloat16),
        text_counts=[text_tokens], grid=(grid, grid), projected=projected,
    )


def bench_run(config: TrainConfig, accelerator, dit: torch.nn.Module, params: list[torch.nn.Parameter], steps: int) -> Run:
    """A trainer `Run` around a DiT built here, prepared by the trainer's `prepare_model`."""
    run = Run(config, as_dict(config), accelerator, Path(tempfile.gettempdir()), None, None, dit=dit, params=params)
    prepare_model(run, steps)
    return run


def timed_steps(run: Run, batch: Batch, warmup: int, steps: int) -> dict:
    """`warmup + steps` trainer optimiser steps; median/mean seconds of the timed ones, peak memory
    since the first (the AdamW state appears at the first step)."""
    device = run.accelerator.device
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for index in range(warmup + steps):
        began = time.perf_counter()
        loss, _, _ = optimizer_step(run, lambda a: batch, 1)  # .item() inside: the step has finished
        synchronize(device)
        losses.append(loss)
        if index >= warmup:
            times.append(time.perf_counter() - began)
    result = {"s_per_step": round(statistics.median(times), 4), "s_per_step_mean": round(statistics.mean(times), 4),
              "steps_timed": steps, "loss_first": losses[0], "loss_last": losses[-1]}
    if device.type == "cuda":
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    return result


def device_info(device: torch.device) -> dict:
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device), "torch": torch.__version__}


def run_config(name: str, cfg: Ideogram4Config, accelerator, size: int, text_tokens: int, rank: int,
               warmup: int, steps: int) -> dict:
    variant = CONFIGS[name]
    device = accelerator.device
    dit = random_dit(cfg, device)
    release_text_projection(dit)  # LoRA runs read projected text from the cache
    if variant.fp8:
        store_fp8(dit)
    weights_gib = sum(t.numel() * t.element_size() for t in [*dit.parameters(), *dit.buffers()]) / 2**30
    names = adapters.select_targets(dit, DIFFSYNTH_LORA_TARGETS)
    modules = adapters.initial_modules(dit, names, rank, float(rank), seed=0)
    params = adapters.attach(dit, modules)
    config = TrainConfig(lora_base_model="dit", lora_rank=rank, use_gradient_checkpointing=variant.checkpointing,
                         use_gradient_checkpointing_offload=variant.offload, learning_rate=1e-4)
    run = bench_run(config, accelerator, dit, params, warmup + steps)
    if variant.inference_lora:
        for layer in dit.modules():  # drop the lean forward (an instance attribute): the class's runs again
            if isinstance(layer, LoraLinear):
                layer.__dict__.pop("forward", None)
    assert all(p.device.type == device.type for p in [*dit.parameters(), *params]), "a tensor is not on the device"
    batch = make_batch(cfg, size, text_tokens, device)
    result = {"config": name, **timed_steps(run, batch, warmup, steps), "resident_weights_gib": round(weights_gib, 2),
              "lora_params": adapters.count_parameters(modules), "rank": rank, "size": size,
              "text_tokens": text_tokens, "batch": 1, **device_info(device)}
    accelerator.free_memory()  # Accelerate keeps the prepared model and optimiser otherwise
    del dit, params, batch, modules, run
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(path: Path) -> int:
    for row in map(json.loads, path.read_text().splitlines()):
        if "error" in row:
            print(f"{row['config']:40} {row['error']}")
        else:
            print(f"{row['config']:40} {row['s_per_step']:.3f} s/step  peak {row.get('peak_allocated_gib')} GiB allocated, "
                  f"{row.get('peak_reserved_gib')} GiB reserved  (weights {row['resident_weights_gib']} GiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON-lines file, one line per configuration (appended)")
    parser.add_argument("--summary", type=Path, help="print the rows of this file as a table, then exit")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, to check the script (numbers mean nothing)")
    parser.add_argument("--device", default="cuda", help="only with --smoke may this be anything but cuda")
    args = parser.parse_args(argv)
    if args.summary:
        return summary(args.summary)
    if not args.out:
        parser.error("--out is needed (or --summary FILE)")
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"--configs: {', '.join(unknown)} unknown; choose from {', '.join(CONFIGS)}")
    device = torch.device(args.device)
    if not args.smoke and device.type != "cuda":
        parser.error("the benchmark measures a GPU: --device must be cuda (use --smoke to check the script elsewhere)")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible to PyTorch; this benchmark does not fall back to the CPU", file=sys.stderr)
        return 1
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # --smoke --device cpu: Accelerate must not pick a GPU either
    from ideogram_app.train.loop import make_accelerator

    cfg = Ideogram4Config()
    size, text_tokens, rank = args.size, args.text_tokens, args.rank
    if args.smoke:
        cfg = replace(cfg, **SMOKE_CONFIG)
        size, text_tokens, rank = 128, 16, 4
    accelerator = make_accelerator(TrainConfig())
    if accelerator.device.type != device.type:
        print(f"error: Accelerate chose {accelerator.device}, the benchmark was asked for {device}", file=sys.stderr)
        return 1
    for name in names:
        try:
            result = run_config(name, cfg, accelerator, size, text_tokens, rank, args.warmup, args.steps)
        except torch.OutOfMemoryError as err:
            result = {"config": name, "error": f"out of memory: {str(err).splitlines()[0]}"}
            accelerator.free_memory()
            gc.collect()
            torch.cuda.empty_cache()
        result["smoke"] = args.smoke
        print(json.dumps(result), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
