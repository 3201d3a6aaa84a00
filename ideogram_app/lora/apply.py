"""Put LoRAs on a DiT, rescale them, take them off; `loaded(model)` says what is on it.

Which DiT gets a LoRA is the caller's choice: pass the conditional `transformer` (what published
LoRAs are trained on) or the `unconditional_transformer`. Every function works on the model object
alone, so a pipeline needs one line per operation:

    report = apply_lora(pipe.transformer, "style.safetensors", scale=0.8)
    set_scale(pipe.transformer, report.name, 0.5)
    remove(pipe.transformer)          # all of them; the base is bit-exact again

The file is read and checked completely before the model is touched; if attaching fails half-way
(e.g. out of device memory) the layers already changed are restored.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ideogram_app.lora.formats import LoraFile, read_lora
from ideogram_app.lora.layer import LoraLinear, is_mergeable
from ideogram_app.lora.read import RejectedLora
from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT

_REGISTRY = "_lora_reports"


@dataclass(frozen=True)
class LoraReport:
    """What was loaded: enough for a status line, image metadata and a warning about unmatched keys."""

    name: str
    source: str
    format: str
    scale: float
    merged: bool
    matched: tuple[str, ...]
    unmatched: tuple[str, ...]
    ranks: tuple[int, ...]
    alphas: tuple[float, ...]
    kinds: tuple[str, ...]

    def summary(self) -> str:
        rank = "/".join(map(str, self.ranks))
        alpha = "/".join(f"{a:g}" for a in self.alphas)
        text = (f"{self.name}: {self.format} LoRA, {len(self.matched)} modules ({', '.join(self.kinds)}), "
                f"rank {rank}, alpha {alpha}, scale {self.scale:g}{', merged' if self.merged else ''}")
        if self.unmatched:
            text += f"; {len(self.unmatched)} keys matched nothing and were ignored"
        return text


def lora_targets(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every linear layer a LoRA may target → (out_features, in_features), our module names."""
    targets: dict[str, tuple[int, int]] = {}
    wrapped: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            wrapped.add(name)
        elif not isinstance(module, (nn.Linear, Fp8Linear)) or name.rpartition(".")[0] in wrapped:
            continue
        targets[name] = (module.out_features, module.in_features)
    return targets


def config_targets(cfg: Ideogram4Config | None = None) -> dict[str, tuple[int, int]]:
    """Targets of a DiT with this config (the released model by default), without allocating it."""
    with torch.device("meta"):
        return lora_targets(Ideogram4DiT(cfg or Ideogram4Config()))


def default_name(source: str) -> str:
    """A LoRA's default name: its file stem with anything but letters, digits, `-` and `_` replaced."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", Path(source).stem) or "lora"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"LoRA name {name!r} must be non-empty letters, digits, '-' or '_'")
    return name


def _check_scale(scale: float, name: str) -> float:
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"LoRA {name!r}: scale must be a finite number, got {scale}")
    return scale


def _compute_dtype(model: nn.Module) -> torch.dtype:
    dtype = getattr(model, "compute_dtype", None)
    if dtype is not None:
        return dtype
    return next(t.dtype for t in model.parameters() if t.is_floating_point())


def _registry(model: nn.Module) -> dict[str, LoraReport]:
    if not hasattr(model, _REGISTRY):
        setattr(model, _REGISTRY, {})
    return getattr(model, _REGISTRY)


def loaded(model: nn.Module) -> dict[str, LoraReport]:
    """The LoRAs on `model`, by name, in load order."""
    return dict(_registry(model))


def _wrap(model: nn.Module, name: str) -> LoraLinear:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    layer = getattr(parent, child)
    if not isinstance(layer, LoraLinear):
        layer = LoraLinear(layer)
        setattr(parent, child, layer)
    return layer


def _lora_layers(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]


def apply_lora(
    model: nn.Module, lora: LoraFile | str | Path, name: str | None = None, scale: float = 1.0, merge: bool = False
) -> LoraReport:
    """Attach a LoRA (a file path or a `LoraFile` from `read_lora`) to `model` under `name`.

    `merge=True` adds it into the weights (bf16/fp16/fp32 linears, and fast mode's `Fp8GemmLinear`s by
    re-quantising; fp8-kept and NF4 bases run it unmerged). Raises UnreadableLora / RejectedLora for a
    bad file, ValueError for a taken name, a bad scale or a merge the base cannot take — always before
    the model is changed.
    """
    targets = lora_targets(model)
    if not isinstance(lora, LoraFile):
        lora = read_lora(lora, targets)
    for module_name, module in lora.modules.items():
        if module_name not in targets:
            raise RejectedLora(f"{lora.source}: module {module_name!r} is not a linear layer of {type(model).__name__}")
        out_features, in_features = targets[module_name]
        if module.down.shape[1] != in_features or module.up.shape[0] != out_features:
            raise RejectedLora(
                f"{lora.source}: {module_name!r} adapter maps {module.down.shape[1]} → {module.up.shape[0]}, "
                f"the model's layer maps {in_features} → {out_features}"
            )
    name = _check_name(name if name is not None else default_name(lora.source))
    scale = _check_scale(scale, name)
    registry = _registry(model)
    if name in registry:
        raise ValueError(f"a LoRA named {name!r} is already loaded; remove it first or choose another name")
    if merge:
        for module_name in lora.modules:
            base = model.get_submodule(module_name)
            base = base.base if isinstance(base, LoraLinear) else base
            if not is_mergeable(base):
                raise ValueError(
                    f"cannot merge LoRA {name!r}: {module_name!r} is {type(base).__name__} with "
                    f"{base.weight.dtype} weights; fp8 and NF4 bases are never re-quantised, load it unmerged"
                )
    dtype = _compute_dtype(model)
    try:
        for module_name, module in lora.modules.items():
            _wrap(model, module_name).add(name, module.down, module.up, module.factor, scale, merge, dtype)
    except BaseException:
        _detach(model, name)
        raise
    report = LoraReport(
        name, lora.source, lora.format, scale, merge, tuple(lora.modules), tuple(lora.unmatched),
        tuple(lora.ranks), tuple(lora.alphas), tuple(lora.kinds),
    )
    registry[name] = report
    return report


def set_scale(model: nn.Module, name: str, scale: float) -> LoraReport:
    """Change one LoRA's strength: instant when unmerged, a re-merge of its layers when merged."""
    registry = _registry(model)
    if name not in registry:
        raise KeyError(f"no LoRA named {name!r} is loaded (loaded: {sorted(registry) or 'none'})")
    scale = _check_scale(scale, name)
    for _, layer in _lora_layers(model):
        if name in layer.adapters:
            layer.set_scale(name, scale)
    registry[name] = replace(registry[name], scale=scale)
    return registry[name]


def remove(model: nn.Module, name: str | None = None) -> None:
    """Take off one LoRA, or all with `name=None`; layers left without adapters become the original
    module objects again, with their original weight tensors."""
    registry = _registry(model)
    names = list(registry) if name is None else [name]
    for each in names:
        if each not in registry:
            raise KeyError(f"no LoRA named {each!r} is loaded (loaded: {sorted(registry) or 'none'})")
        _detach(model, each)
        del registry[each]


def _detach(model: nn.Module, name: str) -> None:
    for layer_name, layer in _lora_layers(model):
        if name in layer.adapters:
            layer.remove(name)
        if not layer.adapters:
            parent_name, _, child = layer_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.base)
