"""Opt-in speed-ups for a loaded DiT, each its own small module applied after loading (gpt-fast style).

A *speed mode* says how the DiT's arithmetic runs; it is independent of the memory mode (where the
weights live, `pipeline/placement.py`) and of the devices (one GPU, or two for CFG-parallel):

- `eager`: the modules as loaded (the reference; the default on CPU, where compiling costs more than
  it saves for small requests).
- `exact`: the same bf16 arithmetic with the elementwise chains of each block fused by
  `torch.compile` and attention on the fastest mask-free SDPA kernel (`compiled.py`). Results equal
  eager mode's to bf16 rounding. The default on CUDA.
- `fast`: FP8 e4m3 GEMMs with per-row weight scales and per-token activation scales in the blocks'
  linears (`fp8_gemm.py`), compiled as in `exact` so the activation quantisation fuses into the kernel
  that produces the activation. Opt-in: images differ slightly from exact mode (docs/speed.md gives
  the measured error).

`apply_speed_mode` is the one place that turns a mode name into those passes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SPEED_MODES: tuple[str, ...] = ("eager", "exact", "fast")


def check_speed_mode(mode: object) -> str:
    """The one rule for speed-mode names (pipeline, CLI, API and the Model tab ask it)."""
    if mode not in SPEED_MODES:
        raise ValueError(f"speed mode {mode!r} is unknown; choose one of {', '.join(SPEED_MODES)}")
    return mode  # type: ignore[return-value]


def default_speed_mode(device: torch.device) -> str:
    """`exact` on CUDA, `eager` elsewhere."""
    return "exact" if torch.device(device).type == "cuda" else "eager"


def apply_speed_mode(dit: nn.Module, mode: str, *, cache_dir: str | Path | None = None) -> nn.Module:
    """Make `dit` run in `mode` (in place; returns it). `cache_dir` keeps the compiled kernels across
    process restarts, so only the first start on a machine pays the compile time."""
    check_speed_mode(mode)
    if mode == "eager":
        return dit
    from ideogram_app.speed.compiled import compile_dit

    if mode == "fast":
        from ideogram_app.speed.fp8_gemm import use_fp8_gemms

        use_fp8_gemms(dit)
    return compile_dit(dit, cache_dir=cache_dir)
