"""The one streaming loop: stored tensors -> a state dict in runtime form, one tensor at a time.

Every loader (DiT, text encoder, VAE) first checks the header against its model built on the meta
device, then maps each stored key it wants to a `Target` and calls `stream_state_dict`. Each tensor
is read once, converted on its own and dropped before the next is read, so host memory never holds
more than the loaded model plus one tensor (docs/model-dit.md, "Memory: streaming load"):

- fp8 weights (float8_e4m3fn with a `<key>_scale` beside them) go through
  `conversion.convert_fp8_weight`; their fp32 scales are kept beside them ("keep") or read with the
  weight and consumed ("dequantize");
- `Target.as_stored` tensors are handed over exactly as read, on the host (NF4 data, which
  bitsandbytes takes itself);
- other floating tensors are cast to the compute dtype, everything else keeps its dtype; all go to
  `device`;
- a `Target.part` fills one third of the rows of a fused tensor (diffusers' split q/k/v → `qkv`).

Tensors that live only until converted (fp8 weights being widened, q/k/v parts being copied into their
rows) are read into one reused buffer: no per-layer temporaries fragment the heap and inflate RSS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ideogram_app.loading.checkpoint_layout import stored_shape_to_fused
from ideogram_app.loading.conversion import Fp8Mode, convert_fp8_weight
from ideogram_app.loading.safetensors_io import TensorInfo, iter_tensors, read_tensor
from ideogram_app.model.fp8 import DEQUANT_WORKSPACE_ELEMENTS, FP8_DTYPE


@dataclass(frozen=True)
class Target:
    """Where one stored tensor goes in the model's state dict."""

    name: str
    part: int | None = None  # which third of the rows of a fused q/k/v tensor it fills
    as_stored: bool = False  # no cast, no move: bitsandbytes takes NF4 data and statistics itself


def stream_state_dict(
    header: Mapping[str, TensorInfo],
    targets: Mapping[str, Target],
    device: torch.device,
    dtype: torch.dtype,
    fp8: Fp8Mode = "dequantize",
) -> dict[str, torch.Tensor]:
    """Read every stored key of `targets` once and return the state dict in runtime form.

    `fp8` matters only for fp8 weights: "keep" needs `Fp8Linear` modules to receive them
    (`conversion.prepare_fp8_linears`), "dequantize" plain `nn.Linear`s.
    """
    fp8_weights = {key for key in targets if header[key].dtype == FP8_DTYPE and key + "_scale" in header}
    scale_keys = {key + "_scale" for key in fp8_weights}
    dequantize = fp8 == "dequantize"

    def transient(key: str) -> bool:
        """Read into the reused buffer: valid only until the next tensor is read."""
        return targets[key].part is not None or (dequantize and key in fp8_weights)

    # Dequantising consumes each scale with its weight (read just then: one float per row); keeping
    # stores the scales beside the weights like any other tensor, in fp32.
    wanted = [key for key in targets if not (dequantize and key in scale_keys)]
    workspace = torch.empty(DEQUANT_WORKSPACE_ELEMENTS if fp8_weights and dequantize else 0, dtype=torch.float32, device=device)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(header, wanted, transient=transient):
        target = targets[key]
        if target.as_stored:
            value = tensor
        elif key in fp8_weights:
            scale = read_tensor(header[key + "_scale"]).to(device) if dequantize else None
            value = convert_fp8_weight(tensor.to(device), scale, fp8, dtype, workspace)
        elif key in scale_keys or not tensor.is_floating_point():
            value = tensor.to(device)
        else:
            value = tensor.to(device=device, dtype=dtype)
        _place(state, target, value)
    return state


def _place(state: dict[str, torch.Tensor], target: Target, tensor: torch.Tensor) -> None:
    """Store `tensor` under its name, or as rows `part` of a fused tensor allocated on first use."""
    if target.part is None:
        state[target.name] = tensor
        return
    if target.name not in state:
        shape = stored_shape_to_fused(tuple(tensor.shape), target.part)
        state[target.name] = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
    rows = tensor.shape[0]
    state[target.name][target.part * rows : (target.part + 1) * rows].copy_(tensor)


def assign_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Strictly assign `state` into a (meta-initialised) module; the tensors become the parameters."""
    current = module.state_dict(keep_vars=True)
    expected = set(current)
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}: state dict does not match {type(module).__name__}: "
            f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''} ({len(missing)} total), "
            f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''} ({len(unexpected)} total)"
        )
    for name, tensor in state.items():
        target = current[name]
        if tuple(target.shape) != tuple(tensor.shape):
            raise ValueError(f"{where}: tensor {name!r} has shape {tuple(tensor.shape)}, model expects {tuple(target.shape)}")
    module.load_state_dict(state, strict=True, assign=True)
