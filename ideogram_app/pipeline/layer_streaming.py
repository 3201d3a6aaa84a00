"""The `stream` memory mode: weights wait in pinned host RAM and the transformer blocks visit the
device one at a time, each copied ahead of use while the block before it computes.

Why: the two DiTs are 18.6 GB even in fp8, so `offload` (one whole component on the device) needs
≈ 10 GB and `full` ≈ 27 GB. A block is 0.26 GB in fp8; holding only the running block and the next
`prefetch` ones brings the peak under 8 GB at 1024² (docs/speed.md, "Low-VRAM streaming"). The cost
is PCIe traffic (every step reads both DiTs from host RAM), hidden behind compute by overlapping:

- `place(module)`: all weights go to pinned host RAM (as in `offload`). The module's `layers`
  ModuleList (the DiT's blocks; the text encoder's decoder layers, `language_model.layers`) is
  *streamed*: each block gets a forward pre-hook and a forward hook. Everything else of the module
  (embeddings, projections, final layer) is its *rest* and visits the device for the whole `running`
  block, as in `offload`.
- `running(module)`: the rest is copied in; the first `prefetch + 1` streamed blocks start copying
  on a side CUDA stream. Block i's pre-hook makes the compute stream wait for block i's copy event and
  swaps the device copies into the module's parameter/buffer tables (the same per-call swap as
  `OffloadPlan`, so compiled blocks and LoRA wrappers keep working: they read whatever tensors the
  tables hold). Its post-hook puts the host tensors back, drops the device copies (`record_stream`
  tells the caching allocator the compute stream used them) and starts the copy of block
  i + prefetch. Before a copy starts, the CPU waits for the event of the block whose memory it will
  reuse, so at most `prefetch + 1` blocks are on the device and the allocator reuses their memory
  instead of growing: one block (the one before the running one) of lag keeps the GPU's queue full.
- Weights keep their stored dtype on the way: fp8-kept `Fp8Linear` weights cross PCIe as 1 byte a
  parameter and are widened on the device, half the traffic of bf16. LoRA factors sit inside the
  block (in `LoraLinear`) and travel with it.
- Resident parts: a budget (`resident_bytes`, default 0) keeps device copies of the first
  parts of the modules between runs — per module, in placement order, its rest and then its first
  blocks, as long as each fits what is left. The pipeline places the conditional DiT first, which
  runs at every step, so that is where the budget goes. The module itself keeps its host tensors (a
  forward outside `running` still works on the CPU); a cached copy is used while its host tensor is
  the one in the table, and replaced when a LoRA merge or a new adapter changed it.

The hooks do nothing outside `running`. They are excluded from `torch.compile` tracing
(`torch.compiler.disable`), so a block compiled before or after `place` runs its hooks eagerly around
the compiled code. On the CPU (compute device == storage device) the same path runs with real copies
and no CUDA calls, which is how the tests exercise it. One `running` block per module at a time (the
pipeline's); a nested `running` of the same module is a no-op. `unplace(module)` takes the hooks
off and drops the resident copies, so another plan can take the module without a reload.

This module subclasses `OffloadPlan` and registers itself in `placement.PLANS`; placement.py imports
it at its bottom, so `MemoryPlan.create("stream")` works after importing either module.
"""
from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator

import torch
from torch import nn

from ideogram_app.pipeline.placement import PLANS, OffloadPlan, replace_tensor, tensor_slots

# Nothing resident by default: resident blocks stay on the device through the text-encoder and VAE
# phases too, and 3 GB of them took a whole 1024² generation to 9.4 GB in the driver's view on an H200
# (882 text tokens), while the copies of a step overlap its compute anyway (docs/speed.md, "Low-VRAM
# streaming"). A GPU with room to spare can pass `resident_bytes` to stream less.
DEFAULT_RESIDENT_BYTES = 0
DEFAULT_PREFETCH = 2  # blocks copied ahead of the running one; 1 already overlaps, 2 absorbs jitter

Slot = tuple[dict, str, torch.Tensor]  # (owning table, name, stored host tensor)


@dataclass
class _Copies:
    """Device copies of one unit (a block or a module's rest): (table, name, host, device) rows and
    the event that marks the end of their copy (None on the CPU)."""

    rows: list[tuple[dict, str, torch.Tensor, torch.Tensor]]
    ready: torch.cuda.Event | None


@dataclass
class _Run:
    """One `running` block of one module: which blocks stream, what is copied or swapped in now."""

    streamed: list[int]  # indices of the non-resident blocks, in execution order
    position: dict[int, int]  # block index -> position in `streamed`
    issued: int = 0  # how many of `streamed` have had their copy started
    copies: dict[int, _Copies] = field(default_factory=dict)  # issued, not yet swapped in
    swapped: dict[int, _Copies] = field(default_factory=dict)  # in the module's tables now
    rest: _Copies | None = None


@dataclass
class _Placed:
    """What `place` decided for one module."""

    module: nn.Module
    layers: list[nn.Module]  # the streamed blocks (empty: the whole module is its rest)
    resident_rest: bool
    resident_blocks: int  # the first this-many blocks keep device copies between runs
    resident_cost: int  # bytes of the budget those take
    cache: dict[int, _Copies] = field(default_factory=dict)  # resident copies: -1 = the rest, i = block i
    handles: list = field(default_factory=list)
    run: _Run | None = None


class StreamPlan(OffloadPlan):
    """Weights in pinned host RAM; blocks streamed to the device ahead of use (see the module docstring)."""

    mode = "stream"

    def __init__(
        self,
        device: torch.device,
        storage_device: torch.device | None = None,
        *,
        resident_bytes: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ):
        super().__init__(device, storage_device)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be a whole number of blocks >= 1, got {prefetch!r}")
        if resident_bytes is None:
            resident_bytes = DEFAULT_RESIDENT_BYTES
        if isinstance(resident_bytes, bool) or not isinstance(resident_bytes, int) or resident_bytes < 0:
            raise ValueError(f"resident_bytes must be a whole number of bytes >= 0, got {resident_bytes!r}")
        self.prefetch = prefetch
        self.resident_bytes = resident_bytes
        self._resident_left = resident_bytes
        self._placed: dict[int, _Placed] = {}
        self._released: deque = deque()  # done events of dropped block copies whose memory may still be in use
        self._copy_stream = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mode={self.mode!r}, device={self.device}, storage={self.storage_device}, "
                f"resident_bytes={self.resident_bytes}, prefetch={self.prefetch})")

    # ----- placing ---------------------------------------------------------------------------------
    def place(self, module: nn.Module) -> nn.Module:
        """Pinned host copies (as `offload`), resident parts chosen from the budget, block hooks installed."""
        super().place(module)
        if self._placement(module) is not None:
            return module
        layers = streamed_layers(module)
        block_bytes = [_bytes(tensor_slots(layer)) for layer in layers]
        rest_bytes = _bytes(_rest_slots(module, layers))
        left = self._resident_left
        resident_rest = rest_bytes <= left
        if resident_rest:
            left -= rest_bytes
        resident_blocks = 0
        for size in block_bytes:
            if size > left:
                break
            left -= size
            resident_blocks += 1
        placed = _Placed(module, layers, resident_rest, resident_blocks, self._resident_left - left)
        self._resident_left = left
        for index, layer in enumerate(layers):
            placed.handles.append(layer.register_forward_pre_hook(torch.compiler.disable(partial(self._before_block, placed, index))))
            placed.handles.append(layer.register_forward_hook(torch.compiler.disable(partial(self._after_block, placed, index))))
        self._placed[id(module)] = placed
        return module

    def unplace(self, module: nn.Module) -> nn.Module:
        """Remove the block hooks and drop the resident copies (their budget comes back): the module is a
        plain host module again, for another plan to place (switching modes without reloading)."""
        placed = self._placement(module)
        if placed is None:
            raise ValueError(f"{type(module).__name__} was not placed by this plan")
        if placed.run is not None:
            raise RuntimeError(f"{type(module).__name__} is running; unplace it after its `running` block")
        for handle in placed.handles:
            handle.remove()
        self._resident_left += placed.resident_cost
        del self._placed[id(module)]
        return module

    def resident_parts(self, module: nn.Module) -> tuple[bool, int]:
        """(whether the module's rest stays on the device, how many of its first blocks do)."""
        placed = self._placement(module)
        if placed is None:
            raise ValueError(f"{type(module).__name__} was not placed by this plan")
        return placed.resident_rest, placed.resident_blocks

    def _placement(self, module: nn.Module) -> _Placed | None:
        placed = self._placed.get(id(module))
        return placed if placed is not None and placed.module is module else None

    # ----- running ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def running(self, module: nn.Module) -> Iterator[nn.Module]:
        """The rest on the device for the whole block, the blocks streamed through their hooks.
        Modules this plan did not place visit whole, as in `offload`."""
        placed = self._placement(module)
        if placed is None:
            with super().running(module):
                yield module
            return
        if placed.run is not None:  # nested use of a module already running
            yield module
            return
        streamed = list(range(placed.resident_blocks, len(placed.layers)))
        run = _Run(streamed, {index: pos for pos, index in enumerate(streamed)})
        try:
            run.rest = self._resident(placed, -1, _rest_slots(module, placed.layers)) if placed.resident_rest \
                else self._copy(_rest_slots(module, placed.layers))
            for index in range(placed.resident_blocks):  # refreshed first: they run first
                self._resident(placed, index, tensor_slots(placed.layers[index]))
            self._issue_through(placed, run, self.prefetch)
            self._swap_in(run.rest)
            placed.run = run
            yield module
        finally:
            placed.run = None
            for copies in run.swapped.values():  # a forward that raised mid-way
                _swap_out(copies)
            if run.rest is not None:
                _swap_out(run.rest)
            run.copies.clear()

    def _before_block(self, placed: _Placed, index: int, _module: nn.Module, _args) -> None:
        run = placed.run
        if run is None:
            return
        if index < placed.resident_blocks:
            copies = placed.cache[index]
        else:
            copies = run.copies.pop(index, None)
            if copies is None:  # a block run out of order: fetch it now
                copies = self._copy(tensor_slots(placed.layers[index]))
        self._swap_in(copies)
        run.swapped[index] = copies

    def _after_block(self, placed: _Placed, index: int, _module: nn.Module, _args, _output) -> None:
        run = placed.run
        if run is None or index not in run.swapped:
            return
        copies = run.swapped.pop(index)
        _swap_out(copies)
        if index < placed.resident_blocks:
            return
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
        self._released.append(done)
        copies.rows.clear()  # the device copies go back to the allocator now
        if index in run.position:
            self._issue_through(placed, run, run.position[index] + self.prefetch)

    # ----- copies ------------------------------------------------------------------------------------
    def _issue_through(self, placed: _Placed, run: _Run, last: int) -> None:
        """Start the copies of streamed blocks up to position `last`. Each needs one block's memory:
        while `prefetch + 1` blocks hold some, the CPU waits for the oldest dropped block to finish
        computing, so the allocator hands its memory to the new copy instead of growing."""
        while run.issued <= min(last, len(run.streamed) - 1):
            while self._released and len(self._released) + len(run.copies) + len(run.swapped) > self.prefetch:
                done = self._released.popleft()
                if done is not None:
                    done.synchronize()
            index = run.streamed[run.issued]
            run.copies[index] = self._copy(tensor_slots(placed.layers[index]))
            run.issued += 1

    def _copy(self, slots: list[Slot]) -> _Copies:
        """Device copies of `slots` in their stored dtypes, made on the copy stream on CUDA."""
        if self.device.type != "cuda":
            return _Copies([(table, name, host, torch.empty_like(host, device=self.device).copy_(host)) for table, name, host in slots], None)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        rows = []
        with torch.cuda.stream(self._copy_stream):
            for table, name, host in slots:
                if host.device.type == "cpu" and not host.is_pinned():  # e.g. LoRA factors added after place
                    try:
                        replace_tensor(table, name, host, host.pin_memory())
                        host = table[name]
                    except RuntimeError:  # no more page-locked memory: a slower, synchronous copy
                        pass
                rows.append((table, name, host, host.to(self.device, non_blocking=True)))
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return _Copies(rows, ready)

    def _resident(self, placed: _Placed, key: int, slots: list[Slot]) -> _Copies:
        """The cached device copies of a resident unit, re-copying only tensors whose host tensor changed
        (a LoRA added or merged since the last run); stale entries are dropped with the old table."""
        cached = placed.cache.get(key)
        known = {(id(table), name): (host, device) for table, name, host, device in cached.rows} if cached else {}
        fresh = [slot for slot in slots if known.get((id(slot[0]), slot[1]), (None,))[0] is not slot[2]]
        copied = self._copy(fresh) if fresh else _Copies([], None)
        new = {(id(table), name): (host, device) for table, name, host, device in copied.rows}
        rows = [(table, name, *(new.get((id(table), name)) or known[(id(table), name)])) for table, name, _ in slots]
        placed.cache[key] = _Copies(rows, copied.ready if fresh else (cached.ready if cached else None))
        return placed.cache[key]

    def _swap_in(self, copies: _Copies) -> None:
        """Compute waits for the copy, marks the tensors as used by the compute stream, and reads them."""
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            if copies.ready is not None:
                stream.wait_event(copies.ready)
            for _, _, _, device in copies.rows:
                device.record_stream(stream)
        for table, name, host, device in copies.rows:
            replace_tensor(table, name, host, device)


def _swap_out(copies: _Copies) -> None:
    for table, name, host, _ in copies.rows:
        table[name] = host


def streamed_layers(module: nn.Module) -> list[nn.Module]:
    """The blocks of the outermost ModuleList named `layers` (the DiT's `layers`, the text encoder's
    `language_model.layers`), or none (the VAE: it visits whole)."""
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and name.rpartition(".")[2] == "layers":
            return list(child)
    return []


def _rest_slots(module: nn.Module, layers: list[nn.Module]) -> list[Slot]:
    in_layers = {id(table) for layer in layers for table, _, _ in tensor_slots(layer)}
    return [slot for slot in tensor_slots(module) if id(slot[0]) not in in_layers]


def _bytes(slots: list[Slot]) -> int:
    return sum(tensor.numel() * tensor.element_size() for _, _, tensor in slots)


PLANS[StreamPlan.mode] = StreamPlan
