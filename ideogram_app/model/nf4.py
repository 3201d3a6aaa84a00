"""bitsandbytes NF4 linears (official `ideogram-4-nf4` layout), optional and CUDA-only.

Stored per Linear `X`: `X.weight` packed uint8 [out·in/2, 1], `X.weight.absmax` [out·in/64],
`X.weight.quant_map` [16] and `X.weight.quant_state.bitsandbytes__nf4` (uint8 bytes of a JSON dict
with quant_type, blocksize, dtype and shape) — bitsandbytes' own `Linear4bit` serialisation. The
packed data is handed to `Params4bit.from_prequantized` unchanged; bitsandbytes does the matmuls.
The key layout (and the split q/k/v → fused conversion) lives in `ideogram_app/loading/checkpoint_layout.py`.
"""
from __future__ import annotations

import torch
from torch import nn


def require_nf4_support(device: torch.device, where: str) -> None:
    """Fail before any data is read when NF4 cannot run here."""
    if device.type != "cuda":
        raise RuntimeError(
            f"{where} holds bitsandbytes NF4 weights, which run only on a CUDA device (asked for {device}). "
            "Use the fp8 or bf16 checkpoint on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError(f"{where} holds bitsandbytes NF4 weights: install bitsandbytes (pip install 'bitsandbytes>=0.45')") from None


def nf4_linear(
    in_features: int,
    out_features: int,
    packed: torch.Tensor,
    stats: dict[str, torch.Tensor],
    bias: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """A `bitsandbytes.nn.Linear4bit` on `device` holding prequantised NF4 data; `stats` maps
    'absmax', 'quant_map' and 'quant_state.bitsandbytes__nf4' to their stored tensors."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(
        in_features, out_features, bias=bias is not None, compute_dtype=dtype,
        compress_statistics=False, quant_type="nf4", device="meta",
    )
    layer.weight = bnb.nn.Params4bit.from_prequantized(
        data=packed, quantized_stats=dict(stats), requires_grad=False, device=device, module=layer
    )
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
    return layer
