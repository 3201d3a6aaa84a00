"""Memory passes applied to a loaded DiT before training (gpt-fast style: each a small function).

- `checkpoint_blocks`: per-block activation checkpointing: a block keeps only its input for the
  backward pass and recomputes the rest; with `offload` that input waits in pinned CPU RAM.
- `store_fp8`: frozen Linears kept as scaled fp8 (`Fp8Linear`, one fp32 scale per output row, the
  official checkpoint's recipe), widened to the compute dtype on every forward.
- `release_text_projection`: once the text rows are cached already projected, the 53248→emb_dim
  projection (245 M parameters in the released model) is never called again and is dropped.
- `lean_lora` (its own file): LoRA layers whose backward keeps no fp32 input copies and no widened
  fp8 weights.
- `prefer_expandable_segments`: the CUDA allocator grows segments instead of caching fixed blocks.
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ideogram_app.model.fp8 import FP8_DTYPE, Fp8Linear

FP8_MAX = 448.0  # largest finite float8_e4m3fn value


def _identity(tensor: torch.Tensor) -> tuple:
    return tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tensor.device


def host_copies_of(kept: torch.Tensor):
    """Saved-tensor hooks that keep `kept`, wherever autograd saves it, as a host copy (pinned when it
    lives on a GPU, so the copies run asynchronously on the current stream) and bring it back on
    unpacking. Other saved tensors are left alone. The hooks remember `kept` by address, shape,
    dtype and device only: a reference would keep the device tensor alive."""
    identity = _identity(kept)

    def pack(tensor: torch.Tensor):
        if _identity(tensor) != identity:
            return tensor
        on_gpu = tensor.device.type == "cuda"
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=on_gpu)
        host.copy_(tensor, non_blocking=on_gpu)
        return tensor.device, host

    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = packed
        return host.to(device, non_blocking=device.type == "cuda")

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _checkpointed(forward, offload: bool):
    def run(h: torch.Tensor, *args):
        if not torch.is_grad_enabled():  # validation samples: nothing to save
            return forward(h, *args)
        if not offload:
            return checkpoint(forward, h, *args, use_reentrant=False)
        # The checkpoint saves its inputs through autograd's saved tensors before it installs its own
        # hooks for the block's operations, so these outer hooks see exactly the block input.
        with host_copies_of(h):
            return checkpoint(forward, h, *args, use_reentrant=False)

    return run


def checkpoint_blocks(dit: nn.Module, offload: bool = False) -> nn.Module:
    """Wrap every block's forward in non-reentrant checkpointing (its parameters keep their names, so
    LoRA and checkpoint keys are unchanged). Non-reentrant, because the first block's input does not
    require grad while its LoRA factors do."""
    for block in dit.layers:
        block.forward = _checkpointed(block.forward, offload)  # an instance attribute: nn.Module.__call__ uses it
    return dit


def quantize_fp8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scale_row = max|W_row| / 448; W_fp8 = W / scale_row (the official fp8 files' recipe)."""
    scale = (weight.detach().float().abs().amax(dim=1) / FP8_MAX).clamp_min(1e-12)
    return (weight.detach().float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def store_fp8(dit: nn.Module) -> nn.Module:
    """Every plain `nn.Linear` of `dit` becomes an `Fp8Linear` (in place, same device, bias kept)."""
    for name in [n for n, m in dit.named_modules() if type(m) is nn.Linear]:  # names only: each bf16 weight
        linear = dit.get_submodule(name)                                       # is freed once replaced
        weight, scale = quantize_fp8_rows(linear.weight)
        fp8 = Fp8Linear(linear.in_features, linear.out_features, linear.bias is not None, weight.device,
                        linear.bias.dtype if linear.bias is not None else torch.bfloat16)
        fp8.weight.copy_(weight)
        fp8.weight_scale.copy_(scale)
        if linear.bias is not None:
            fp8.bias.data.copy_(linear.bias.detach())
        parent_name, _, child = name.rpartition(".")
        setattr(dit.get_submodule(parent_name) if parent_name else dit, child, fp8)
        del weight, linear
    return dit


class ReleasedModule(nn.Module):
    """Stands in for a module whose weights were dropped; calling it says why."""

    def __init__(self, why: str):
        super().__init__()
        self.why = why

    def forward(self, *args, **kwargs):
        raise RuntimeError(self.why)


def release_text_projection(dit: nn.Module) -> None:
    dit.llm_cond_proj = ReleasedModule(
        "llm_cond_proj was released: this run reads text rows already projected from the feature cache"
    )


def prefer_expandable_segments() -> None:
    """Let the CUDA caching allocator map memory into growing segments (less fragmentation: the
    memory reserved stays close to the memory in use) unless the user configured the allocator.
    Only works before CUDA is first used, so the command line calls it before anything else."""
    if not any(os.environ.get(name) for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
