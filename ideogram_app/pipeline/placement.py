"""Where model components live and where they run: one `MemoryPlan` object per memory mode.

The pipeline asks a plan two things only: `place(module)` once after loading (where the weights wait)
and `with plan.running(module):` around each use (have it on the compute device meanwhile). No other
code branches on the mode, so a new way of placing weights (streaming one layer at a time, say) is
one more subclass registered in `PLANS`.

- `full`: every component lives on the device (fastest; needs the sum of all weights).
- `offload`: components wait in pinned CPU RAM and visit the device only while they run; the peak is
  the largest component (one DiT) plus activations.
- `cpu`: everything on the CPU (tiny models, debugging).
- `stream`: weights wait in pinned CPU RAM and the transformer blocks visit the device one at a time,
  copied ahead of use (`layer_streaming.py`); the peak is a few blocks plus activations.

`StreamPlan` lives in its own file and subclasses `OffloadPlan`, so it imports this module; it adds
itself to `PLANS`, and this module imports it at the bottom so that importing either file registers it.
`MEMORY_MODES` is spelled out so it is complete whichever file is imported first.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class MemoryPlan:
    """Everything resident on one device: placing moves the module there, running is free."""

    mode = "full"

    def __init__(self, device: torch.device, storage_device: torch.device | None = None):
        self.device = device  # where components compute
        self.storage_device = storage_device or device  # where they wait between uses

    @classmethod
    def create(cls, mode: str = "full", device: str | torch.device | None = None) -> "MemoryPlan":
        """The plan for `mode` on `device` (default: CUDA when present)."""
        return PLANS[check_memory_mode(mode)].on(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))

    @classmethod
    def on(cls, device: torch.device) -> "MemoryPlan":
        return cls(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, device={self.device}, storage={self.storage_device})"

    def place(self, module: nn.Module) -> nn.Module:
        """Put a freshly loaded module where it waits between uses."""
        return module.to(self.storage_device)

    @contextmanager
    def running(self, module: nn.Module) -> Iterator[nn.Module]:
        """Have `module` on the compute device for the duration of the block."""
        yield module


class CpuPlan(MemoryPlan):
    """Everything on the CPU, whatever device was asked for."""

    mode = "cpu"

    @classmethod
    def on(cls, device: torch.device) -> "MemoryPlan":
        return cls(torch.device("cpu"))


class OffloadPlan(MemoryPlan):
    """Weights wait in CPU RAM; each component visits the device only while it runs."""

    mode = "offload"

    @classmethod
    def on(cls, device: torch.device) -> "MemoryPlan":
        return cls(device, torch.device("cpu"))

    def place(self, module: nn.Module) -> nn.Module:
        """Host copies are pinned, so each visit to the GPU is a full-speed asynchronous copy."""
        module.to(self.storage_device)
        if self.device.type == "cuda":
            try:
                for table, name, tensor in tensor_slots(module):
                    if not tensor.is_pinned():
                        replace_tensor(table, name, tensor, tensor.pin_memory())
            except RuntimeError as err:  # the OS refused more page-locked memory: slower, still correct
                warnings.warn(f"could not pin offloaded weights in RAM ({err}); offloading will be slower", stacklevel=2)
        return module

    @contextmanager
    def running(self, module: nn.Module) -> Iterator[nn.Module]:
        """Each weight gets a device copy on entry and its stored tensor back on exit: inference never
        changes weights, so nothing is copied back and the host copy is reused."""
        stored = [slot for slot in tensor_slots(module) if slot[2].device != self.device]
        try:
            for table, name, tensor in stored:
                replace_tensor(table, name, tensor, tensor.to(self.device, non_blocking=True))
            yield module
        finally:
            for table, name, tensor in stored:
                table[name] = tensor
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


PLANS: dict[str, type[MemoryPlan]] = {"full": MemoryPlan, "offload": OffloadPlan, "cpu": CpuPlan}  # + "stream", below
MEMORY_MODES: tuple[str, ...] = ("full", "offload", "cpu", "stream")


def check_memory_mode(mode: object) -> str:
    """The one rule for memory-mode names (plans, estimates and the app's Model tab ask it)."""
    if mode not in PLANS:
        raise ValueError(f"memory mode {mode!r} is unknown; choose one of {', '.join(MEMORY_MODES)}")
    return mode  # type: ignore[return-value]


def tensor_slots(module: nn.Module) -> list[tuple[dict, str, torch.Tensor]]:
    """(owning dict, name, tensor) of every parameter and buffer of every submodule."""
    return [
        (table, name, tensor)
        for sub in module.modules()
        for table in (sub._parameters, sub._buffers)
        for name, tensor in table.items()
        if tensor is not None
    ]


def replace_tensor(table: dict, name: str, old: torch.Tensor, new: torch.Tensor) -> None:
    """Put `new` where `old` was, as a frozen Parameter if `old` was one (module code may check)."""
    table[name] = nn.Parameter(new, requires_grad=False) if isinstance(old, nn.Parameter) else new


import ideogram_app.pipeline.layer_streaming  # noqa: E402,F401  registers "stream" (it subclasses OffloadPlan above)
