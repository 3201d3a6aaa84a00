"""`LoraLinear`: LoRA adapters beside any of our linear kinds, unmerged or merged.

The wrapped `base` is an `nn.Linear` (bf16/fp16/fp32), an `Fp8Linear` (weights stay float8 and the
adapters run in the activation dtype beside its matmul: the base is never re-quantised) or a
bitsandbytes `Linear4bit` (NF4, CUDA), or an `Fp8GemmLinear` (fast mode, ideogram_app/speed/fp8_gemm.py).
Output:

    y = base(x) + Σ_i s_i · (alpha_i / r_i) · B_i (A_i x)      for every unmerged adapter i

Unmerged adapters can be stacked, rescaled and removed instantly (a float changes). A merged
adapter is added into a plain float weight instead (no per-step cost). Merging never subtracts:
the weight before the first merge is kept (in host memory) and every change rebuilds the merged
weight from it, so removing the last merged adapter puts back the original tensor bit for bit. An
`Fp8GemmLinear` merges too: its kept fp8 weight is dequantised, the deltas added, and the sum
re-quantised per row; unmerging puts back the kept fp8 weight and scales.

Adapter factors are buffers (non-persistent: the model's state_dict does not change), so moving the
model or offloading it between devices moves them too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ideogram_app.speed.fp8_gemm import Fp8GemmLinear, quantize_weight

MERGEABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SLOT = "lora_"


class LoraAdapter(nn.Module):
    """One adapter on one layer: A (rank, in), B (out, rank), the file's alpha/rank, the user's scale."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, factor: float, scale: float, merged: bool):
        super().__init__()
        self.register_buffer("down", down, persistent=False)
        self.register_buffer("up", up, persistent=False)
        self.factor = factor
        self.scale = scale
        self.merged = merged

    @property
    def weight_scale(self) -> float:
        return self.scale * self.factor

    def delta(self) -> torch.Tensor:
        """scale · alpha/rank · B @ A in fp32, for merging."""
        return (self.up.float() @ self.down.float()) * self.weight_scale


def is_mergeable(base: nn.Module) -> bool:
    """Plain float weights take a merge, and so does an `Fp8GemmLinear` (its activations are quantised
    anyway, and it is re-quantised per row). Weight-only fp8 (`Fp8Linear`, kept as released) and NF4
    weights are never re-quantised: they run LoRAs unmerged."""
    return isinstance(base, Fp8GemmLinear) or (isinstance(base, nn.Linear) and base.weight.dtype in MERGEABLE_DTYPES)


class LoraLinear(nn.Module):
    """A linear layer with named LoRA adapters; `base` is the untouched original module."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.in_features: int = base.in_features
        self.out_features: int = base.out_features
        # Keyed "lora_<name>": a bare name such as "keys" or "train" would collide with ModuleDict attributes.
        self.slots = nn.ModuleDict()
        # The base weight before the first merge (for an Fp8GemmLinear: its fp8 weight and scales).
        self._original: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def adapters(self) -> dict[str, LoraAdapter]:
        """The adapters by name, in the order they were added."""
        return {key[len(_SLOT):]: adapter for key, adapter in self.slots.items()}  # type: ignore[misc]

    def add(self, name: str, down: torch.Tensor, up: torch.Tensor, factor: float, scale: float, merge: bool, dtype: torch.dtype) -> None:
        """Attach an adapter; factors are stored in `dtype` (the activation dtype) on the weight's device."""
        if _SLOT + name in self.slots:
            raise ValueError(f"this layer already has an adapter named {name!r}")
        if merge and not is_mergeable(self.base):
            raise ValueError(
                f"cannot merge into {type(self.base).__name__} with {self.base.weight.dtype} weights: fp8 and NF4 "
                "bases are never re-quantised, load the LoRA unmerged"
            )
        device = self.base.weight.device
        self.slots[_SLOT + name] = LoraAdapter(down.to(device, dtype), up.to(device, dtype), factor, scale, merge)
        if merge:
            self._remerge()

    def set_scale(self, name: str, scale: float) -> None:
        adapter = self.slots[_SLOT + name]
        adapter.scale = scale
        if adapter.merged:
            self._remerge()

    def remove(self, name: str) -> None:
        merged = self.slots[_SLOT + name].merged
        del self.slots[_SLOT + name]
        if merged:
            self._remerge()

    def replace_base(self, convert) -> None:
        """Put `convert(base)` in place of `base`, adapters kept (how `use_fp8_gemms` converts a layer that
        carries LoRAs). `convert` sees the weight as it was before any merge; merged adapters are then
        merged into the new base. If `convert` fails, the old base keeps its merged weight."""
        merged = [a for a in self.slots.values() if a.merged]
        for adapter in merged:
            adapter.merged = False
        self._remerge()  # nothing merged: the kept original goes back
        try:
            self.base = convert(self.base)
        finally:
            for adapter in merged:
                adapter.merged = True
            self._remerge()

    def _remerge(self) -> None:
        """weight = original + Σ merged deltas, computed in fp32 from the kept original."""
        if isinstance(self.base, Fp8GemmLinear):
            self._remerge_fp8()
            return
        current = self.base.weight
        merged = [a for a in self.slots.values() if a.merged]
        if not merged:
            if self._original is not None:
                original = self._original
                self._original = None
                if not (isinstance(original, nn.Parameter) and original.device == current.device):
                    original = nn.Parameter(original.to(current.device), requires_grad=False)
                self.base.weight = original
            return
        if self._original is None:
            # On the host the weight's storage itself is kept (no copy); a device weight is copied to the host.
            # Always a plain tensor: a Parameter attribute would register as a parameter of this module
            # (in its state_dict, moved by .to()).
            self._original = current.detach() if current.device.type == "cpu" else current.detach().to("cpu")
        original = self._original.to(current.device)
        total = original.float()
        for adapter in merged:
            total = total + adapter.delta()
        weight = total.to(original.dtype)
        if weight.device.type == "cpu" and current.is_pinned():
            weight = weight.pin_memory()
        self.base.weight = nn.Parameter(weight, requires_grad=False)

    def _remerge_fp8(self) -> None:
        """The same rule for an `Fp8GemmLinear`: the kept original is its (fp8 weight, scales) pair, and
        the merged weight is `quantize_weight(dequantised original + Σ deltas)`."""
        base = self.base
        device = base.weight.device
        merged = [a for a in self.slots.values() if a.merged]
        if not merged:
            if self._original is not None:
                weight, scale = self._original
                self._original = None
                base.weight, base.weight_scale = weight.to(device), scale.to(device)
            return
        if self._original is None:
            kept = (base.weight, base.weight_scale)
            self._original = kept if device.type == "cpu" else tuple(t.to("cpu") for t in kept)
        weight, scale = (t.to(device) for t in self._original)
        total = weight.float() * scale[:, None]
        for adapter in merged:
            total += adapter.delta()
        weight, scale = quantize_weight(total)
        del total
        if device.type == "cpu" and base.weight.is_pinned():
            weight, scale = weight.pin_memory(), scale.pin_memory()
        base.weight, base.weight_scale = weight, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for adapter in self.slots.values():
            if adapter.merged or adapter.scale == 0:
                continue
            if not y.is_contiguous():
                y = y.contiguous()
            # y += (s · h) Bᵀ in one fused GEMM, without a second output-sized buffer. The scale multiplies
            # the small rank-r product rather than going in as addmm's alpha: a compiled block (exact
            # mode) then reads it at run time instead of compiling again for every new value.
            h = F.linear(x.to(adapter.down.dtype), adapter.down) * adapter.weight_scale
            y.view(-1, self.out_features).addmm_(h.reshape(-1, h.shape[-1]).to(y.dtype), adapter.up.t().to(y.dtype))
        return y

    def extra_repr(self) -> str:
        parts = [f"{name}: rank {a.down.shape[0]}, scale {a.scale:g}{', merged' if a.merged else ''}" for name, a in self.adapters.items()]
        return "; ".join(parts)

