"""Exact mode: each DiT block compiled with `torch.compile`, attention on the fastest mask-free kernel.

What compiling buys: a block's GEMMs and attention are already single library calls, but between
them sit chains of small elementwise ops — four RMSNorms, the adaLN modulation, two tanh gates, the
per-head QK norms and RoPE, SiLU·mul — each an eager kernel reading and writing the whole activation.
Inductor fuses each chain into one kernel (measured 5.08 → 3.71 ms per block at 1024² on an H100,
docs/model-dit.md, "Performance choices"). The arithmetic is the same; only where bf16 rounding
happens inside a fused chain differs (docs/speed.md, "Exact mode (compiled)").

How, and why this way:
- One compiled function (`_COMPILED_BLOCK`) serves every block: the block is an argument, and with
  dynamo's inlining of nn.Modules (the default) its weights are graph inputs rather than constants.
  So the 34 identical blocks of both DiTs share one compiled graph per shape class, the compile is
  paid once, not 34 times, and weights may change under it: memory plans swap device copies into
  `module._parameters`, LoRA merges replace a weight, and the next call reads what the table holds.
- Each block's `forward` becomes that function, set on the instance. `nn.Module.__call__` still runs
  first, eagerly, so forward hooks (the `stream` memory plan fetches a block's weights in one) run
  around the compiled code instead of being traced into it.
- `dynamic=True`: the batch and sequence dims are symbolic from the first compile, so image sizes and
  text lengths (conditional N = T + image tokens, unconditional N = image tokens) never recompile.
  Size-1 dims are always specialised by dynamo, so batch 1 and batch ≥ 2 are two shape classes; a
  left-padded batch (the attention mask) is a third, and a LoRA on a block's linears changes the
  module structure, which is one more graph per structure (not per scale: scales are read at run time).
- Attention runs under `attention.fastest_attention` inside the compiled code (recorded at trace time,
  free per call).
- `cache_dir` points every compile cache (inductor's FX-graph and AOT-autograd caches, Triton's
  kernels) at one folder, so only the first start on a machine pays the compile time.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import MethodType
from typing import Callable, Iterable

import torch
import torch._functorch.config
import torch._inductor.config
from torch import nn

from ideogram_app.model.token_layout import build_token_layout
from ideogram_app.speed.attention import fastest_attention

# Graphs one process may hold for the block function: shape classes × block structures (plain, fp8,
# each LoRA arrangement) × devices. Past dynamo's default of 8 it would silently run blocks eagerly.
RECOMPILE_LIMIT = 64
# Seconds to compile one shape class of a block on a GPU the first time: the first 1024² image on an
# H200 took 11.5 s longer with an empty cache than a steady one, 4.1 s with a warm cache
# (benchmarks/RESULTS.md, "Speed modes end to end"); the warm-up message quotes it.
FIRST_COMPILE_SECONDS = 12


def _block_forward(block: nn.Module, h, adaln_input, cos, sin, mask):
    with fastest_attention(h.device):
        return type(block).forward(block, h, adaln_input, cos, sin, mask)


_COMPILED_BLOCK = torch.compile(_block_forward, dynamic=True)


def use_compile_cache(cache_dir: str | os.PathLike) -> Path:
    """Keep compiled kernels in `cache_dir` across restarts (the app passes `<data>/compile-cache`).

    Inductor and Triton read these locations when they compile, so call this before the first compile
    of the process; `compile_dit(cache_dir=...)` does. Returns the resolved folder.
    """
    root = Path(cache_dir).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ValueError(f"compile cache folder {root} is not a writable folder: {err}") from err
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root)
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return root


def is_compiled(block: nn.Module) -> bool:
    """Whether `compile_dit` has made this block run the compiled function."""
    forward = block.__dict__.get("forward")
    return isinstance(forward, MethodType) and forward.__func__ is _COMPILED_BLOCK


def compile_dit(dit: nn.Module, *, cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """Compile every block of `dit.layers` in place (idempotent); returns `dit`.

    Nothing compiles here: the first forward of each shape class does (see `warm_up`, which runs them
    ahead of the first request and says so in a status line).
    """
    if cache_dir is not None:
        use_compile_cache(cache_dir)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in dit.layers:
        if not is_compiled(block):
            block.forward = MethodType(_COMPILED_BLOCK, block)
    return dit


def _shape_class(dit: nn.Module, batch: int) -> tuple:
    """What makes a separate compiled graph: the block's module structure, its dtypes and batch 1 vs more."""
    block = dit.layers[0]
    return (
        tuple(type(m) for m in block.modules()),
        tuple(sorted({t.dtype for t in (*block.parameters(), *block.buffers())}, key=str)),
        batch > 1,
    )


def _cache_has_graphs() -> bool:
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return folder is not None and any((Path(folder) / "fxgraph").glob("*/*"))


@torch.inference_mode()
def warm_up(
    dits: Iterable[nn.Module],
    *,
    device: str | torch.device,
    status: Callable[[str], None],
    batch_sizes: Iterable[int] = (1,),
    grid: tuple[int, int] = (64, 64),
    text_tokens: int = 300,
) -> float:
    """Compile ahead of the first request: one conditional and one unconditional forward of each DiT
    per batch size, at `grid` image tokens (64 × 64 is 1024²) and `text_tokens` text rows. Returns the
    seconds it took.

    Runs under `torch.inference_mode()`, as the pipeline does (the grad mode is part of what a compiled
    graph is valid for). The DiTs must be on `device` for the call: wrap it in the memory plan's
    `running` for offloaded ones; a graph is compiled per device, so CFG-parallel warms each DiT on its
    own GPU (one call each). Sizes at which a sequence length equals a model width (256, 512,
    4608 on the released model) would compile a graph for that length only; the defaults avoid them.
    `status` gets one line before (how long the first start takes, or that the cache is read) and one
    after (the time taken).
    """
    dits = [d for d in {id(d): d for d in dits}.values()]
    batch_sizes = sorted(set(batch_sizes))
    if not batch_sizes or batch_sizes[0] < 1:
        raise ValueError(f"batch_sizes must be whole numbers >= 1, got {batch_sizes}")
    if text_tokens < 1:
        raise ValueError(f"text_tokens must be >= 1 (the conditional pass has text), got {text_tokens}")
    device = torch.device(device)
    classes = len({_shape_class(d, b) for d in dits for b in batch_sizes})
    if _cache_has_graphs():
        status("compiling the DiT blocks (reading the compile cache: a few seconds)")
    else:
        status(
            f"compiling the DiT blocks (first start on this machine: about {classes * FIRST_COMPILE_SECONDS} s; "
            "later starts read the cache)"
        )
    start = time.perf_counter()
    grid_h, grid_w = grid
    for dit in dits:
        dtype = dit.compute_dtype
        for batch in batch_sizes:
            for n_text in (text_tokens, 0):
                position_ids, segment_ids, indicator = (
                    t.to(device) for t in build_token_layout(n_text, grid_h, grid_w, batch=batch)
                )
                x = torch.zeros(batch, position_ids.shape[1], dit.cfg.in_channels, device=device)
                text_hidden = torch.zeros(batch, n_text, dit.cfg.emb_dim, dtype=dtype, device=device) if n_text else None
                t = torch.full((batch,), 0.5, device=device)
                dit(x, t, None, position_ids, segment_ids, indicator, text_hidden=text_hidden)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    status(f"DiT blocks compiled in {seconds:.0f} s")
    return seconds
