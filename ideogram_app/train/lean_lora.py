"""LoRA layers whose backward pass keeps only what it must (docs/training.md, "Memory").

The LoRA package's `LoraLinear` is the inference layer; under autograd its operations leave behind,
per layer and step: an fp32 copy of the layer input (the fp32 A factor's gradient needs an fp32
input) and, on an fp8-kept base, the widened bf16 weight (the input's gradient needs it). At the
released shapes and 1024² that is 0.34 GiB of input copies and 0.47 GiB of widened weights per block.

`lean_lora` gives each trained `LoraLinear` a forward through `_LoraLinearFunction`: the same
operations in the same order (so the same output), but it keeps only the input in its own dtype and
the rank-r activations; the backward widens the input to the factor dtype again (exact) and re-widens
an fp8 weight for the input's gradient, one matrix at a time, freed right after its product. Each
gradient is computed with the operations autograd would have used for the inference layer, so the
gradients are the same (tests/train/test_parts.py). Without autograd (validation samples) the layer's
own forward runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ideogram_app.lora.layer import LoraLinear
from ideogram_app.model.fp8 import Fp8Linear, dequantize_fp8

WIDEN_WORKSPACE_ELEMENTS = 1 << 24  # 64 MiB of fp32: the largest DiT weight widens in 4 chunks


def frozen_weight(base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The base weight in the compute dtype: an fp8 weight widened (bit for bit what `Fp8Linear`
    computes, without its two full-size fp32 temporaries), a float weight as it is."""
    if isinstance(base, Fp8Linear):
        workspace = torch.empty(min(base.weight.numel(), WIDEN_WORKSPACE_ELEMENTS), dtype=torch.float32, device=base.weight.device)
        return dequantize_fp8(base.weight, base.weight_scale, dtype, workspace)
    return base.weight


def _bias(base: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    return None if base.bias is None else base.bias.to(dtype)


class _LoraLinearFunction(torch.autograd.Function):
    """y = base(x) + Σ s_i · B_i (A_i x), as `LoraLinear.forward` computes it, with a lean backward."""

    @staticmethod
    def forward(ctx, x, layer, scales, *factors):
        base = layer.base
        y = F.linear(x, frozen_weight(base, x.dtype), _bias(base, x.dtype))
        hidden = []
        for index, scale in enumerate(scales):
            down, up = factors[2 * index], factors[2 * index + 1]
            h = F.linear(x.to(down.dtype), down)
            rows = h.reshape(-1, h.shape[-1]).to(y.dtype)
            y.view(-1, layer.out_features).addmm_(rows, up.t().to(y.dtype), alpha=scale)
            hidden.append(rows)
        ctx.layer, ctx.scales = layer, scales
        ctx.save_for_backward(x, *factors, *hidden)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, *rest = ctx.saved_tensors
        count = len(ctx.scales)
        factors, hidden = rest[: 2 * count], rest[2 * count:]
        grad = grad_y.reshape(-1, ctx.layer.out_features)
        inputs = x.reshape(-1, x.shape[-1])
        grad_x = None
        factor_grads = []
        for index, scale in enumerate(ctx.scales):
            down, up, rows = factors[2 * index], factors[2 * index + 1], hidden[index]
            need_down, need_up = ctx.needs_input_grad[3 + 2 * index], ctx.needs_input_grad[4 + 2 * index]
            # The addmm_ above: d(rows) = s·G·U, dU = s·Gᵀ·rows (U = up in the activation dtype).
            grad_rows = grad.mm(up.to(grad.dtype))
            if scale != 1:
                grad_rows = grad_rows * scale
            grad_up = None
            if need_up:
                grad_up = grad.t().mm(rows)
                if scale != 1:
                    grad_up = grad_up * scale
                grad_up = grad_up.to(up.dtype)
            # h = x A^T in the factor dtype: dA = dhᵀ·x, dx = dh·A.
            grad_h = grad_rows.to(down.dtype)
            grad_down = grad_h.t().mm(inputs.to(down.dtype)) if need_down else None
            if ctx.needs_input_grad[0]:
                part = grad_h.mm(down).to(x.dtype)
                grad_x = part if grad_x is None else grad_x + part
            factor_grads += [grad_down, grad_up]
        if ctx.needs_input_grad[0]:
            # Autograd would add the adapters' parts first and the base's last; so does this.
            weight = frozen_weight(ctx.layer.base, x.dtype)
            base_part = grad.mm(weight)
            del weight
            grad_x = (base_part if grad_x is None else grad_x + base_part).view(x.shape)
        return (grad_x, None, None, *factor_grads)


def _lean_forward(layer: LoraLinear):
    inference_forward = layer.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return inference_forward(x)
        active = [a for a in layer.slots.values() if not a.merged and a.scale != 0]
        factors = [t for a in active for t in (a.down, a.up)]
        return _LoraLinearFunction.apply(x, layer, tuple(a.weight_scale for a in active), *factors)

    return forward


def lean_lora(model: nn.Module) -> int:
    """Give every `LoraLinear` of `model` on a frozen float or fp8 base the lean training forward (an
    instance attribute, so names and state dicts are unchanged); returns how many layers changed.
    NF4 bases keep the inference layer's forward."""
    changed = 0
    for layer in model.modules():
        if not isinstance(layer, LoraLinear):
            continue
        base = layer.base
        if not (type(base) is nn.Linear or isinstance(base, Fp8Linear)) or any(p.requires_grad for p in base.parameters()):
            continue
        layer.forward = _lean_forward(layer)
        changed += 1
    return changed
