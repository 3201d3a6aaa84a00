"""The trained LoRA: targets, initialisation, continuation, the preset LoRA, export.

The adapter layer is the LoRA package's `LoraLinear` (the same code that runs a LoRA at inference);
the trainer attaches one adapter named `ADAPTER` and turns its two factors into fp32 parameters, so
LoRA weights and their optimiser state stay fp32 on any base (bf16, fp8-kept, NF4) while the base
matmul runs in the compute dtype. Targets follow DiffSynth's `--lora_target_modules`: a name matches
a module whose name is it or ends with "." + it (PEFT's suffix rule), so `adaln_modulation` also
matches `final_layer.adaln_modulation`; "" means every Linear inside the blocks.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from ideogram_app.lora import LoraFile, LoraModule, apply_lora, lora_targets, read_lora
from ideogram_app.lora.layer import LoraLinear, is_mergeable
from ideogram_app.train.config import split_list

ADAPTER = "trained"
PRESET = "preset"
NATIVE_PREFIX = "diffusion_model."


def select_targets(dit: nn.Module, spec: str | None) -> list[str]:
    """Module names the LoRA goes on, in model order; ValueError naming targets that match nothing."""
    linears = lora_targets(dit)
    wanted = split_list(spec)
    if not wanted:
        return [name for name in linears if name.startswith("layers.")]

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unmatched = [t for t in wanted if not any(matches(n, t) for n in linears)]
    if unmatched:
        kinds = sorted({n.split(".", 2)[-1] if n.startswith("layers.") else n for n in linears})
        raise ValueError(f"--lora_target_modules: {', '.join(unmatched)} match no Linear of the DiT; its Linears are "
                         f"{', '.join(kinds)}")
    return [name for name in linears if any(matches(name, t) for t in wanted)]


def initial_modules(dit: nn.Module, names: list[str], rank: int, alpha: float, seed: int) -> dict[str, LoraModule]:
    """Fresh adapters: A uniform in ±1/sqrt(in_features) (PEFT's default bound), B zero, so training
    starts from the base model exactly. Seeded per module, identical on every process."""
    shapes = lora_targets(dit)
    modules = {}
    for name in names:
        out_features, in_features = shapes[name]
        digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        bound = 1.0 / math.sqrt(in_features)
        down = (torch.rand(rank, in_features, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        modules[name] = LoraModule(down.float(), torch.zeros(out_features, rank), alpha)
    return modules


def continued_modules(dit: nn.Module, names: list[str], path: str | Path, rank: int, alpha: float, seed: int) -> dict[str, LoraModule]:
    """Adapters from `--lora_checkpoint`, rescaled to this run's alpha/rank so the delta is unchanged;
    targets the file lacks start fresh (with a warning), modules outside the targets are an error."""
    lora = read_lora(path, lora_targets(dit))
    outside = sorted(set(lora.modules) - set(names))
    if outside:
        raise ValueError(f"--lora_checkpoint {path}: has adapters on {', '.join(outside[:5])}, which --lora_target_modules "
                         "does not select; add them to the targets")
    wrong_rank = sorted({m.rank for m in lora.modules.values()} - {rank})
    if wrong_rank:
        raise ValueError(f"--lora_checkpoint {path}: rank {wrong_rank[0]}, but --lora_rank is {rank}")
    modules = initial_modules(dit, [n for n in names if n not in lora.modules], rank, alpha, seed)
    if modules:
        warnings.warn(f"--lora_checkpoint {path}: {len(modules)} target module(s) are not in the file and start fresh", stacklevel=2)
    for name, module in lora.modules.items():
        modules[name] = LoraModule(module.down.float() * (module.factor / (alpha / rank)), module.up.float(), alpha)
    return {name: modules[name] for name in names}


def attach(dit: nn.Module, modules: dict[str, LoraModule]) -> list[nn.Parameter]:
    """Put the adapters on `dit` (unmerged `LoraLinear`s) and return their factors as fp32 parameters."""
    apply_lora(dit, LoraFile("trainer", "comfyui", modules), name=ADAPTER)
    params = []
    for name, module in modules.items():
        adapter = dit.get_submodule(name).adapters[ADAPTER]
        device = adapter.down.device
        for role, tensor in (("down", module.down), ("up", module.up)):
            delattr(adapter, role)  # a buffer in the inference layer: becomes a trainable fp32 parameter
            param = nn.Parameter(tensor.to(device, torch.float32).contiguous())
            setattr(adapter, role, param)
            params.append(param)
    return params


def trained_modules(dit: nn.Module, alpha: float) -> dict[str, LoraModule]:
    """The trained adapters as `LoraModule`s (fp32, CPU), for the LoRA package's writers."""
    return {
        name: LoraModule(layer.adapters[ADAPTER].down.detach().float().cpu(), layer.adapters[ADAPTER].up.detach().float().cpu(), alpha)
        for name, layer in dit.named_modules() if isinstance(layer, LoraLinear) and ADAPTER in layer.adapters
    }


def load_trained(dit: nn.Module, native: dict[str, torch.Tensor]) -> None:
    """Copy the factors of a native-layout file (as `trained_modules` + the writer produced it) into
    the attached adapters; every adapter must be in the file and the file must hold nothing else."""
    left = {k for k in native if not k.endswith(".alpha")}
    with torch.no_grad():
        for name, layer in dit.named_modules():
            if isinstance(layer, LoraLinear) and ADAPTER in layer.adapters:
                adapter = layer.adapters[ADAPTER]
                for role, suffix in (("down", ".lora_A.weight"), ("up", ".lora_B.weight")):
                    key = NATIVE_PREFIX + name + suffix
                    if key not in native:
                        raise ValueError(f"the checkpoint has no {key}: it was made for other LoRA targets")
                    getattr(adapter, role).copy_(native[key])
                    left.discard(key)
    if left:
        raise ValueError(f"the checkpoint has adapters this run does not train: {sorted(left)[:3]}")


def merge_preset(dit: nn.Module, path: str | Path) -> str:
    """DiffSynth's differential LoRA: the preset goes into the base before training. Float weights take
    it for good (W += alpha/r · B A in fp32); fp8/NF4 weights are never re-quantised, so there it
    stays an unmerged, frozen adapter beside the trained one. Returns a one-line summary."""
    lora = read_lora(path, lora_targets(dit))
    layers = {name: dit.get_submodule(name) for name in lora.modules}
    if all(is_mergeable(layer) for layer in layers.values()):
        with torch.no_grad():
            for name, module in lora.modules.items():
                weight = layers[name].weight
                delta = module.factor * (module.up.double() @ module.down.double())
                weight.copy_((weight.double() + delta.to(weight.device)).to(weight.dtype))
        return f"preset LoRA {path} merged into {len(layers)} layers"
    apply_lora(dit, lora, name=PRESET)
    return f"preset LoRA {path} applied unmerged to {len(layers)} layers (fp8/NF4 weights are never re-quantised)"


def count_parameters(modules: dict[str, LoraModule]) -> int:
    return sum(m.down.numel() + m.up.numel() for m in modules.values())
