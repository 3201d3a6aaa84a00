"""Weight-only FP8 linears in the official Ideogram 4 layout (DiT and Qwen3-VL text encoder alike).

Storage: `<name>.weight` float8_e4m3fn [out, in] and `<name>.weight_scale` float32 [out] (one scale per
output row), optional `<name>.bias`. The true weight is `weight.float() * weight_scale[:, None]`.
There is no FP8 matmul here: the weight is widened to the activation dtype and an ordinary GEMM runs,
which works on every device. Two ways to use it, chosen by `ideogram_app/loading/conversion.py`:
- keep `Fp8Linear` modules (half the memory of bf16, a dequantise per forward), or
- `dequantize_fp8(weight, scale, dtype)` once into a plain `nn.Linear` (faster per step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn

DEQUANT_WORKSPACE_ELEMENTS = 1 << 20


def dequantize_fp8(
    weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, workspace: torch.Tensor | None = None
) -> torch.Tensor:
    """`(weight.float() * scale[:, None]).to(dtype)`, bit for bit, without an fp32 copy of the matrix.

    Rows are widened in chunks through `workspace` (a flat fp32 buffer; one of
    DEQUANT_WORKSPACE_ELEMENTS is made if none is given). A loader passes one workspace for all its
    layers: no per-layer temporaries are allocated, so none can fragment the heap and inflate RSS.
    """
    if weight.dim() != 2 or scale.shape != (weight.shape[0],):
        raise ValueError(f"fp8 weight {tuple(weight.shape)} needs a 1-D scale of {weight.shape[0]} rows, got {tuple(scale.shape)}")
    if workspace is None:
        workspace = torch.empty(min(weight.numel(), DEQUANT_WORKSPACE_ELEMENTS), dtype=torch.float32, device=weight.device)
    out_rows, in_features = weight.shape
    rows = max(1, workspace.numel() // max(1, in_features))
    if rows * in_features > workspace.numel():
        workspace = torch.empty(in_features, dtype=torch.float32, device=weight.device)  # one row wider than the workspace
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    for start in range(0, out_rows, rows):
        stop = min(start + rows, out_rows)
        widened = workspace[: (stop - start) * in_features].view(stop - start, in_features)
        widened.copy_(weight[start:stop]).mul_(scale[start:stop, None])
        out[start:stop].copy_(widened)
    return out


class Fp8Linear(nn.Module):
    """A Linear whose weight stays float8_e4m3fn in memory and is widened on every forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The formula in one shot: per-forward speed matters more here than a transient fp32 copy."""
        return (self.weight.float() * self.weight_scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8_e4m3"

