"""What a guided step costs when the GPU runs it for seconds on end, as a real generation does (GPU only).

Short timings (one block, one forward after an idle GPU) run at the boost clock; a 48-step image keeps
the card busy long enough to reach its power limit, and from then on the clock is whatever the limit
allows. This script measures that steady state for one DiT at the released shapes with random weights:

    python benchmarks/sustained_step.py --mode exact --out sustained.jsonl
    python benchmarks/sustained_step.py --mode fast --gemm-error --out sustained.jsonl

1. `step`: conditional (T text tokens + 1024² image) and unconditional forwards back to back for
   `--seconds`, CUDA events around every step, while `nvidia-smi` samples the SM clock, the power
   draw and the throttle reasons every 100 ms; the median of the second half of the steps is reported.
2. the same with the conditional forward alone: what each card does per step in CFG-parallel, where the
   conditional DiT has a GPU to itself.
3. three profiled steps of each kind: kernel time split into GEMMs, attention and the rest, and the idle
   time between kernels. GEMM + attention is the part no fusion of the elementwise work can remove.
4. `--gemm-error`: for each linear of the first block, on the activations a real forward feeds it, the
   relative error of the bf16 GEMM and of the fp8 GEMM of fast mode (e4m3 per-token activations, the
   weight stored e4m3 per row as in the fp8 release) against fp32 arithmetic on the same stored weight.

One JSON line per phase goes to `--out` (appended) and to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generate_e2e import build_real_size  # noqa: E402  (benchmarks/ is the script's folder)

from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT  # noqa: E402
from ideogram_app.model.token_layout import build_token_layout  # noqa: E402
from ideogram_app.speed import apply_speed_mode  # noqa: E402

# nvidia-smi's throttle-reason bit for "the software power cap is lowering the clock".
SW_POWER_CAP = 0x4


class ClockSampler:
    """`nvidia-smi` sampling the SM clock, power draw and throttle reasons every 100 ms around a block;
    the summary ignores the first third of the samples (the clock is still settling there)."""

    FIELDS = "clocks.sm,power.draw,power.limit,clocks_throttle_reasons.active"

    def __init__(self, gpu_index: int):
        self.gpu_index = gpu_index
        self.log = Path(tempfile.mkstemp(suffix=".csv")[1])

    def __enter__(self):
        self.process = subprocess.Popen(
            ["nvidia-smi", "-i", str(self.gpu_index), f"--query-gpu={self.FIELDS}", "--format=csv,noheader,nounits",
             "-lms", "100"], stdout=self.log.open("w"))
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait()

    def summary(self) -> dict:
        rows = [[field.strip() for field in line.split(",")] for line in self.log.read_text().splitlines() if line.strip()]
        rows = rows[len(rows) // 3:]
        if not rows:
            return {}
        reasons = [int(r[3], 16) for r in rows]
        return {
            "sm_clock_mhz": round(statistics.mean(float(r[0]) for r in rows)),
            "power_w": round(statistics.mean(float(r[1]) for r in rows)),
            "power_limit_w": round(float(rows[0][2])),
            "power_capped_share": round(sum(bool(r & SW_POWER_CAP) for r in reasons) / len(reasons), 2),
        }


def sustained_ms(fn, seconds: float, guess_ms: float) -> list[float]:
    """Call `fn` back to back for about `seconds` (no host sync in between); ms of each call."""
    calls = max(4, int(seconds * 1000 / guess_ms))
    events = [torch.cuda.Event(enable_timing=True) for _ in range(calls + 1)]
    events[0].record()
    for i in range(calls):
        fn()
        events[i + 1].record()
    torch.cuda.synchronize()
    return [events[i].elapsed_time(events[i + 1]) for i in range(calls)]


def kernel_class(name: str) -> str:
    """GEMM, attention or other, by kernel name (cuBLAS' nvjet/xmma kernels, cuDNN's and flash SDPA;
    inductor's fused Triton kernels carry the names of the ops they absorbed, so they are tested first)."""
    if name.startswith("triton_"):
        return "other"
    if "sdpa" in name or "flash" in name or "fmha" in name:
        return "attention"
    if name.startswith(("nvjet", "sm90_xmma", "sm80_xmma", "cutlass")) or "gemm" in name.lower():
        return "gemm"
    return "other"


def kernel_breakdown(fn, repeats: int = 3) -> dict:
    """ms per call of `fn` in GEMM, attention and other kernels, and the idle time between kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name) for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
    )
    by_class = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    busy, run_start, run_end = 0.0, kernels[0][0], kernels[0][1]
    for start, end, name in kernels:
        by_class[kernel_class(name)] += end - start
        if start > run_end:
            busy += run_end - run_start
            run_start = start
        run_end = max(run_end, end)
    busy += run_end - run_start
    span = kernels[-1][1] - kernels[0][0]
    per_call = {f"{k}_ms": round(v / 1000 / repeats, 2) for k, v in by_class.items()}
    return {**per_call, "idle_ms": round((span - busy) / 1000 / repeats, 2),
            "gemm_plus_attention_ms": round((by_class["gemm"] + by_class["attention"]) / 1000 / repeats, 2)}


def forward_call(dit: nn.Module, text_tokens: int, device: str):
    """A forward of `dit` at 1024² (64 × 64 image tokens) with `text_tokens` projected text rows, as the
    pipeline calls it on every step (positions prepared once)."""
    pos, seg, ind = (t.to(device) for t in build_token_layout(text_tokens, 64, 64, batch=1))
    positions = dit.prepare_positions(pos, seg)
    gen = torch.Generator(device=device).manual_seed(7)
    x = torch.randn(1, pos.shape[1], dit.cfg.in_channels, device=device, generator=gen)
    hidden = None
    if text_tokens:
        hidden = 0.5 * torch.randn(1, text_tokens, dit.cfg.emb_dim, device=device, generator=gen).bfloat16()
    t = torch.full((1,), 0.4, device=device)
    return lambda: dit(x, t, None, pos, seg, ind, text_hidden=hidden, positions=positions)


def gemm_errors(dit: nn.Module, call) -> dict:
    """Relative error against fp32 of each block-0 linear as a bf16 GEMM and as fast mode's fp8 GEMM,
    on the inputs one real forward gives it. The weight is first stored e4m3 per row (as the fp8 release
    stores it), so both GEMMs multiply the same weight values and only the arithmetic differs."""
    from ideogram_app.speed.fp8_gemm import Fp8GemmLinear, quantize_weight

    block = dit.layers[0]
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: inputs.setdefault(name, a[0].detach().clone()))
             for name, m in block.named_modules() if isinstance(m, nn.Linear) and name != "adaln_modulation"]
    call()
    for hook in hooks:
        hook.remove()
    errors = {}
    for name, x in inputs.items():
        linear = block.get_submodule(name)
        q, scale = quantize_weight(linear.weight)
        stored = (q.float() * scale[:, None]).bfloat16()
        x = x.reshape(-1, x.shape[-1])
        exact = x.float() @ stored.float().t()
        fp8 = Fp8GemmLinear(linear.in_features, linear.out_features, bias=False, device="meta")
        fp8.weight, fp8.weight_scale, fp8.bias = q, scale, None

        def rel(y):
            return round(float((y.float() - exact).norm() / exact.norm()), 5)

        errors[name] = {"bf16": rel(F.linear(x, stored)), "fp8": rel(fp8(x))}
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="exact", choices=("eager", "exact", "fast"))
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each sustained phase runs")
    parser.add_argument("--gemm-error", action="store_true", help="per-GEMM bf16/fp8 error on block 0 (before the mode)")
    parser.add_argument("--compile-cache", default=None, metavar="DIR")
    parser.add_argument("--out", default="sustained.jsonl")
    args = parser.parse_args()
    device = "cuda"
    gpu_index = torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        gpu_index = int(visible.split(",")[gpu_index])
    out = open(args.out, "a")

    def emit(row: dict) -> None:
        row = {"mode": args.mode, "text_tokens": args.text_tokens, **row}
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
        out.flush()

    dit = build_real_size(lambda: Ideogram4DiT(Ideogram4Config()), device, seed=1)
    cond, uncond = forward_call(dit, args.text_tokens, device), forward_call(dit, 0, device)
    with torch.inference_mode():
        if args.gemm_error:
            emit({"phase": "gemm_error_vs_fp32", "block0": gemm_errors(dit, cond)})
        apply_speed_mode(dit, args.mode, cache_dir=args.compile_cache)

        def step():
            cond()
            uncond()

        step()
        torch.cuda.synchronize()
        emit({"phase": "facts", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__})
        for phase, fn, guess in (("step", step, 280.0), ("conditional_forward", cond, 140.0)):
            with ClockSampler(gpu_index) as clocks:
                times = sustained_ms(fn, args.seconds, guess)
                breakdown = kernel_breakdown(fn)
            later = times[len(times) // 2:]
            emit({"phase": phase, "calls": len(times), "first_ms": round(times[0], 1),
                  "median_ms": round(statistics.median(later), 1), "kernels": breakdown, "clocks": clocks.summary()})


if __name__ == "__main__":
    main()
