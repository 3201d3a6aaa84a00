"""What a stored fp8 Linear becomes at run time: kept fp8, or dequantised to the compute dtype.

The official checkpoints store every Linear of the DiT and of the text encoder as weight-only fp8
(`ideogram_app/model/fp8.py` has the layout and the maths). A loader reads the file as stored and
this module decides, in one place, what each such Linear becomes:

- `"keep"`: an `Fp8Linear` (half the memory of bf16; the weight is widened on every forward);
- `"dequantize"`: a plain `nn.Linear` holding `weight.float() * weight_scale[:, None]` cast to the
  compute dtype (fastest per step).

`convert_fp8_weight` is the one conversion of a stored fp8 weight. `convert_fp8_linears` is the same
conversion as a plain pass over a module that is already loaded (gpt-fast's `quantize.py` style):
load with `fp8="keep"`, then convert — the seam for later passes (fp8 GEMMs, LoRA).

Why the loaders convert per tensor while streaming instead of loading everything as stored and then
running the pass: the pass holds the fp8 copy of every layer not yet converted beside the bf16 copies
already made, and on the host the freed fp8 buffers neither return to the OS (glibc keeps them in its
heap) nor fit the next bf16 weight (twice their size). Measured with tests/fixtures/memory_probe.py
(peak RSS growth over the loaded model's bytes, fp8 file -> bf16): keep-then-pass 1.55× for the
51 M-parameter test DiT and 1.53× for the 35 M-parameter text model, which also stays resident after
the pass; per-tensor conversion 1.06× and 1.03×. On CUDA (H200, a 0.92 GB bf16 DiT loaded from fp8)
the peak allocated memory is 1.52× the model for keep-then-pass and 1.02× per tensor. Per tensor, the
fp8 weight lives in one reused read buffer only until it is widened, and the result is the same tensor
bit for bit (tests/loading/test_conversion.py loads both ways and compares; on CUDA too).
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
from torch import nn

from ideogram_app.model.fp8 import DEQUANT_WORKSPACE_ELEMENTS, Fp8Linear, dequantize_fp8

Fp8Mode = Literal["keep", "dequantize"]
# The choices a user is offered: "auto" lets the pipeline pick a mode from the free device memory.
FP8_MODES: tuple[str, ...] = ("auto", "keep", "dequantize")


def check_fp8_mode(fp8: str) -> Fp8Mode:
    """A loader's fp8 argument, checked before any file is opened."""
    if fp8 not in ("dequantize", "keep"):
        raise ValueError(f"fp8 must be 'dequantize' or 'keep', got {fp8!r}")
    return fp8  # type: ignore[return-value]


def prepare_fp8_linears(module: nn.Module, names: Iterable[str], fp8: Fp8Mode) -> nn.Module:
    """Give each Linear stored as fp8 (named in `names`) the module it is at run time, before streaming.

    "keep": an `Fp8Linear` shell replaces the `nn.Linear` (in place, same device — typically meta);
    "dequantize": the `nn.Linear` stays and receives `convert_fp8_weight`'s output. Either way a name
    that is not an `nn.Linear` of `module` is an error.
    """
    for name in sorted(set(names)):
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        linear = getattr(parent, child_name, None)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{name!r} is an fp8 layer in the checkpoint but {type(linear).__name__} in {type(module).__name__}, not nn.Linear")
        if fp8 == "keep":
            bias_dtype = linear.bias.dtype if linear.bias is not None else torch.bfloat16
            setattr(parent, child_name, Fp8Linear(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device, bias_dtype))
    return module


def convert_fp8_weight(
    weight: torch.Tensor, scale: torch.Tensor | None, fp8: Fp8Mode, dtype: torch.dtype, workspace: torch.Tensor | None = None
) -> torch.Tensor:
    """The runtime form of one stored fp8 weight: itself ("keep", its scale stays beside it; `scale`
    may be None) or `dequantize_fp8(weight, scale, dtype)` ("dequantize", through `workspace` if given)."""
    if fp8 == "keep":
        return weight
    if scale is None:
        raise ValueError("dequantising an fp8 weight needs its scale")
    return dequantize_fp8(weight, scale, dtype, workspace)


def convert_fp8_linears(module: nn.Module, fp8: Fp8Mode, dtype: torch.dtype) -> nn.Module:
    """Pass over a loaded module: with "dequantize" every `Fp8Linear` becomes an `nn.Linear` of `dtype`
    holding `convert_fp8_weight`'s output (bias as loaded); with "keep" nothing changes. In place.

    On the host this costs up to 1.5× the model's bytes (module docstring); to dequantise a whole
    checkpoint, load it with `fp8="dequantize"` instead.
    """
    if check_fp8_mode(fp8) == "keep":
        return module
    targets = [(name, child) for name, child in module.named_modules() if isinstance(child, Fp8Linear)]
    workspaces: dict[torch.device, torch.Tensor] = {}  # one per device, reused by every layer on it
    for name, fp8_linear in targets:
        device = fp8_linear.weight.device
        if device not in workspaces:
            workspaces[device] = torch.empty(DEQUANT_WORKSPACE_ELEMENTS, dtype=torch.float32, device=device)
        linear = nn.Linear(fp8_linear.in_features, fp8_linear.out_features, bias=fp8_linear.bias is not None, device="meta")
        weight = convert_fp8_weight(fp8_linear.weight, fp8_linear.weight_scale, fp8, dtype, workspaces[device])
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if fp8_linear.bias is not None:
            linear.bias = nn.Parameter(fp8_linear.bias.detach(), requires_grad=False)
        parent_name, _, child_name = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child_name, linear)
    return module
