"""LoRA training step at the released shapes: seconds per optimiser step and peak GPU memory (one GPU).

Random weights (the released DiT config, 9.28 B parameters), one 1024x1024 sample (4096 image tokens)
with a 512-token caption already projected (what the trainer's text cache feeds), batch 1, rank 32 on
DiffSynth's targets (qkv, o, w1, w2, w3, adaln_modulation; 106.0 M fp32 parameters, fused AdamW). The
step is the trainer's own: `flow_matching_loss` → backward → clipping at 1.0 → AdamW → zero_grad.

Configurations: bf16 base without and with per-block gradient checkpointing, and the base kept as
scaled fp8 (`Fp8Linear`, every Linear, the official fp8 files' layout) with checkpointing. Each
writes one JSON line to --out. Runs on CUDA only — there is no CPU fallback — in about 3 minutes on
an H200:

    python benchmarks/train_step.py --out results.jsonl

`--smoke` runs a 2-block, narrow model for a few steps to check the script itself (on any device,
named with --device); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT  # noqa: E402
from ideogram_app.train import adapters  # noqa: E402
from ideogram_app.train.config import DIFFSYNTH_LORA_TARGETS  # noqa: E402
from ideogram_app.train.memory import checkpoint_blocks, release_text_projection, store_fp8  # noqa: E402
from ideogram_app.train.objective import Batch, flow_matching_loss  # noqa: E402

CONFIGS = {  # name: (gradient checkpointing, fp8-kept base)
    "bf16": (False, False),
    "bf16+checkpointing": (True, False),
    "fp8-kept+checkpointing": (True, True),
}


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


def make_batch(cfg: Ideogram4Config, size: int, text_tokens: int, device: torch.device) -> Batch:
    grid = size // 16
    generator = torch.Generator(device).manual_seed(1)
    n = grid * grid
    return Batch(
        latents=torch.randn(1, n, cfg.in_channels, device=device, generator=generator),
        noise=torch.randn(1, n, cfg.in_channels, device=device, generator=generator),
        times=torch.tensor([0.4], device=device),
        text=torch.randn(1, text_tokens, cfg.emb_dim, device=device, generator=generator).to(torch.bfloat16),
        text_counts=[text_tokens], grid=(grid, grid), projected=True,
    )


def run_config(name: str, cfg: Ideogram4Config, device: torch.device, size: int, text_tokens: int, rank: int,
               warmup: int, steps: int) -> dict:
    checkpointing, fp8 = CONFIGS[name]
    dit = random_dit(cfg, device)
    release_text_projection(dit)  # LoRA runs read projected text from the cache
    if fp8:
        store_fp8(dit)
    weights_gib = sum(t.numel() * t.element_size() for t in [*dit.parameters(), *dit.buffers()]) / 2**30
    names = adapters.select_targets(dit, DIFFSYNTH_LORA_TARGETS)
    modules = adapters.initial_modules(dit, names, rank, float(rank), seed=0)
    params = adapters.attach(dit, modules)
    if checkpointing:
        checkpoint_blocks(dit)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
    batch = make_batch(cfg, size, text_tokens, device)
    assert all(p.device.type == device.type for p in [*dit.parameters(), *params]), "a tensor is not on the device"
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for index in range(warmup + steps):
        began = time.perf_counter()
        loss = flow_matching_loss(dit, dit, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        losses.append(loss.item())
        if index >= warmup:
            times.append(time.perf_counter() - began)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "config": name, "s_per_step": round(statistics.median(times), 4), "s_per_step_mean": round(statistics.mean(times), 4),
        "peak_mem_gib": None if peak is None else round(peak, 2), "resident_weights_gib": round(weights_gib, 2),
        "lora_params": adapters.count_parameters(modules), "rank": rank, "size": size, "text_tokens": text_tokens,
        "batch": 1, "steps_timed": steps, "loss_first": losses[0], "loss_last": losses[-1],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
    }
    del dit, params, optimizer, batch, modules
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON-lines file, one line per configuration (appended)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, to check the script (numbers mean nothing)")
    parser.add_argument("--device", default="cuda", help="only with --smoke may this be anything but cuda")
    args = parser.parse_args(argv)
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
    cfg = Ideogram4Config()
    size, text_tokens, rank = args.size, args.text_tokens, args.rank
    if args.smoke:
        cfg = replace(cfg, num_layers=2, emb_dim=512, num_heads=2, intermediate_size=256, adanln_dim=64, llm_features_dim=64)
        size, text_tokens, rank = 128, 16, 4
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer sets it (ideogram_app/train/loop.py)
    for name in names:
        try:
            result = run_config(name, cfg, device, size, text_tokens, rank, args.warmup, args.steps)
        except torch.OutOfMemoryError as err:
            result = {"config": name, "error": f"out of memory: {str(err).splitlines()[0]}"}
            gc.collect()
            torch.cuda.empty_cache()
        result["smoke"] = args.smoke
        print(json.dumps(result), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
