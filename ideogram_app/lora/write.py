"""Write a LoRA in the layout every tool reads (native/ComfyUI) or in diffusers' layout.

Native: `diffusion_model.<module>.lora_A.weight` (rank × in), `.lora_B.weight` (out × rank) and
`.alpha` (a 0-d float32 tensor) with the fused `attention.qkv` — the key space of the official
checkpoint, read by ComfyUI, DiffSynth (prefix stripped), ai-toolkit and diffusers' converter.
Rank and alpha live in the tensors; the safetensors metadata repeats them as strings together with
the targets, the base model id, trigger words and training steps.

diffusers: `transformer.<module>.lora_A/B.weight` with split `to_q/to_k/to_v` and `to_out.0`; alpha
goes into the PEFT config JSON under the `lora_adapter_metadata` metadata key, which diffusers'
loader passes to PEFT as is. The split is exact: a fused adapter (shared A) becomes the same A on
q, k and v with the matching thirds of B's rows; an adapter that was fused from three separate ones
(block-diagonal B) is split back into its blocks at their original ranks.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors.torch import save_file

from ideogram_app.lora.formats import DIFFUSERS_METADATA_KEY, QKV_PARTS, LoraModule

# Metadata keys this package writes and carries over on conversion (values are always strings).
DESCRIPTIVE_KEYS = ("base_model", "trigger_words", "steps")


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _describe(modules: Mapping[str, LoraModule], layout: str, base_model: str | None,
              trigger_words: Sequence[str] | None, steps: int | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    ranks = sorted({m.rank for m in modules.values()})
    alphas = sorted({m.alpha for m in modules.values()})
    kinds = sorted({re.sub(r"^layers\.\d+\.", "", name) for name in modules})
    metadata = {k: str(v) for k, v in (extra or {}).items()}
    metadata |= {
        "format": "pt",
        "layout": layout,
        "rank": ",".join(map(str, ranks)),
        "alpha": ",".join(f"{_number(a)}" for a in alphas),
        "targets": ",".join(kinds),
    }
    if base_model is not None:
        metadata["base_model"] = base_model
    if trigger_words is not None:
        metadata["trigger_words"] = json.dumps(list(trigger_words), ensure_ascii=False)
    if steps is not None:
        metadata["steps"] = str(int(steps))
    return metadata


def native_state_dict(modules: Mapping[str, LoraModule]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        key = f"diffusion_model.{name}"
        state[key + ".lora_A.weight"] = module.down.contiguous()
        state[key + ".lora_B.weight"] = module.up.contiguous()
        state[key + ".alpha"] = torch.tensor(float(module.alpha), dtype=torch.float32)
    return state


def write_native(
    path: str | Path,
    modules: Mapping[str, LoraModule],
    *,
    base_model: str | None = None,
    trigger_words: Sequence[str] | None = None,
    steps: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the native/ComfyUI layout (fused qkv, `.alpha` tensors, descriptive metadata)."""
    path = Path(path)
    save_file(native_state_dict(modules), path, metadata=_describe(modules, "comfyui", base_model, trigger_words, steps, metadata))
    return path


def split_qkv(module: LoraModule, qkv_out: int) -> list[LoraModule | None]:
    """The q, k and v adapters of a fused qkv adapter, each exact; None for a part whose rows are zero."""
    rows = qkv_out // 3
    blocks = [module.up[i * rows : (i + 1) * rows] for i in range(3)]
    used = [(block != 0).any(dim=0) for block in blocks]
    disjoint = all(not (used[i] & used[j]).any() for i in range(3) for j in range(i + 1, 3))
    parts: list[LoraModule | None] = []
    for block, columns in zip(blocks, used):
        if not columns.any():
            parts.append(None)
        elif disjoint:  # a block-diagonal B: each part keeps only its own rank-r_i slice
            rank = int(columns.sum())
            parts.append(LoraModule(module.down[columns].clone(), block[:, columns].contiguous(), module.factor * rank))
        else:
            parts.append(LoraModule(module.down.clone(), block.contiguous(), module.alpha))
    return parts


def diffusers_modules(modules: Mapping[str, LoraModule]) -> dict[str, LoraModule]:
    """Our module names → diffusers' (`to_q/to_k/to_v`, `to_out.0`), q/k/v split exactly."""
    out: dict[str, LoraModule] = {}
    for name, module in modules.items():
        if name.endswith(".attention.qkv"):
            for split_name, part in zip(QKV_PARTS, split_qkv(module, module.up.shape[0])):
                if part is not None:
                    out[name[: -len("qkv")] + split_name] = part
        elif name.endswith(".attention.o"):
            out[name[: -len("o")] + "to_out.0"] = module
        else:
            out[name] = module
    return out


def peft_config(modules: Mapping[str, LoraModule]) -> dict:
    """The LoraConfig fields diffusers needs: the common rank/alpha plus anchored per-module exceptions."""
    rank = Counter(m.rank for m in modules.values()).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in modules.values()).most_common(1)[0][0]
    return {
        "r": rank,
        "lora_alpha": _number(alpha),
        "rank_pattern": {"^" + re.escape(n): m.rank for n, m in modules.items() if m.rank != rank},
        "alpha_pattern": {"^" + re.escape(n): _number(m.alpha) for n, m in modules.items() if m.alpha != alpha},
        "target_modules": sorted(modules),
    }


def write_diffusers(
    path: str | Path,
    modules: Mapping[str, LoraModule],
    *,
    base_model: str | None = None,
    trigger_words: Sequence[str] | None = None,
    steps: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write diffusers' layout (`transformer.` prefix, split q/k/v, alpha in the PEFT config)."""
    path = Path(path)
    split = diffusers_modules(modules)
    state: dict[str, torch.Tensor] = {}
    for name, module in split.items():
        state[f"transformer.{name}.lora_A.weight"] = module.down.contiguous()
        state[f"transformer.{name}.lora_B.weight"] = module.up.contiguous()
    described = _describe(modules, "diffusers", base_model, trigger_words, steps, metadata)
    described[DIFFUSERS_METADATA_KEY] = json.dumps({f"transformer.{k}": v for k, v in peft_config(split).items()}, sort_keys=True)
    save_file(state, path, metadata=described)
    return path
