"""Checkpoint key layouts: which layout a safetensors header holds and how its keys map onto our modules.

DiT (docs/model-dit.md, "Checkpoint layouts and loading"): key naming is official *fused*
(`attention.qkv`, `attention.o`) or diffusers *split* (`attention.to_q/to_k/to_v/to_out.0`); linear
weights are *plain* (bf16/fp32), official weight-only *fp8* (e4m3 weight + fp32 [out] `weight_scale`)
or bitsandbytes *nf4* (packed uint8 + `absmax`/`quant_map`/`quant_state.bitsandbytes__nf4`). Split
q/k/v are row slices 0:d, d:2d, 2d:3d of the fused `qkv`, so conversion is a row concatenation in
q, k, v order (for fp8 scales and nf4 blocks too, since 64-blocks never straddle rows).

Text encoder (docs/model-vae-text.md, "Checkpoint layouts and loading"): a transformers
`Qwen3VLModel` state dict with no prefix; only `language_model.*` is ours, `visual.*` is skipped.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

import torch

from ideogram_app.loading.safetensors_io import TensorInfo
from ideogram_app.model.fp8 import FP8_DTYPE

NF4_SUFFIXES = (".absmax", ".quant_map", ".quant_state.bitsandbytes__nf4")
_SPLIT_KEY = re.compile(r"^(layers\.\d+\.attention\.)(to_q|to_k|to_v|to_out\.0)\.(.+)$")
_QKV_PART = {"to_q": 0, "to_k": 1, "to_v": 2}
_QUANTISATION_SUFFIXES = (".weight_scale", *(".weight" + suffix for suffix in NF4_SUFFIXES))
LANGUAGE_MODEL_PREFIX = "language_model."
VISION_PREFIX = "visual."


@dataclass(frozen=True)
class DitLayout:
    naming: Literal["fused", "split"]
    weights: Literal["plain", "fp8", "nf4"]


def fused_key(key: str) -> tuple[str, int | None]:
    """Official key for any stored key, and which third of `qkv` it fills (0/1/2) or None."""
    m = _SPLIT_KEY.match(key)
    if not m:
        return key, None
    prefix, part, rest = m.groups()
    if part == "to_out.0":
        return f"{prefix}o.{rest}", None
    return f"{prefix}qkv.{rest}", _QKV_PART[part]


def detect_dit_layout(header: Mapping[str, TensorInfo], where: str) -> DitLayout:
    """Classify a DiT header by key names and dtypes; raise naming the file when it is no DiT at all."""
    if "layers.0.attention.qkv.weight" in header:
        naming = "fused"
    elif "layers.0.attention.to_q.weight" in header:
        naming = "split"
    else:
        sample = sorted(header)[:5]
        raise ValueError(
            f"{where}: not an Ideogram 4 DiT checkpoint: neither 'layers.0.attention.qkv.weight' (official) "
            f"nor 'layers.0.attention.to_q.weight' (diffusers) is present; first keys are {sample}"
        )
    if any(key.endswith(".quant_state.bitsandbytes__nf4") for key in header):
        return DitLayout(naming, "nf4")
    scales = [key for key in header if key.endswith(".weight_scale")]
    if scales:
        for key in scales:
            weight = header.get(key[: -len("_scale")])
            scale = header[key]
            if weight is None or weight.dtype != FP8_DTYPE:
                raise ValueError(f"{where}: {key!r} has no float8_e4m3fn weight next to it")
            if scale.dtype != torch.float32 or scale.shape != (weight.shape[0],):
                raise ValueError(
                    f"{where}: {key!r} must be float32 of shape [{weight.shape[0]}] (one scale per output row), "
                    f"got {scale.dtype} {list(scale.shape)}"
                )
        return DitLayout(naming, "fp8")
    fp8_without_scale = [key for key, info in header.items() if info.dtype == FP8_DTYPE]
    if fp8_without_scale:
        raise ValueError(f"{where}: {fp8_without_scale[0]!r} is float8_e4m3fn but has no '.weight_scale' next to it")
    return DitLayout(naming, "plain")


def stored_shape_to_fused(shape: tuple[int, ...], part: int | None) -> tuple[int, ...]:
    """Shape the fused tensor has when a split part has `shape` (q/k/v rows are stacked ×3)."""
    if part is None:
        return shape
    return (shape[0] * 3, *shape[1:])


def quantised_linear(key: str) -> tuple[str, str] | None:
    """Split a quantisation key into (linear name, suffix), e.g. ('layers.0.attention.qkv', '.weight_scale')."""
    for suffix in _QUANTISATION_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


def fp8_linear_names(keys: Iterable[str]) -> set[str]:
    """Module names that carry an fp8 scale, i.e. `X` for every stored `X.weight_scale`."""
    return {key[: -len(".weight_scale")] for key in keys if key.endswith(".weight_scale")}


def widen_nf4_quant_state(packed_json: torch.Tensor, factor: int) -> torch.Tensor:
    """Quant-state bytes of a row concatenation of `factor` equal parts (split q/k/v → fused qkv)."""
    meta = json.loads(bytes(packed_json.tolist()).decode("utf-8"))
    meta["shape"] = [meta["shape"][0] * factor, *meta["shape"][1:]]
    return torch.tensor(list(json.dumps(meta).encode("utf-8")), dtype=torch.uint8)


def text_encoder_keys(header: Mapping[str, TensorInfo], where: str) -> list[str]:
    """Stored keys of the text model; vision keys are skipped, anything else is an error."""
    stray = sorted(k for k in header if not k.startswith((LANGUAGE_MODEL_PREFIX, VISION_PREFIX)))
    if stray:
        raise ValueError(
            f"{where}: not a Qwen3VLModel state dict (expected 'language_model.*' and 'visual.*' keys "
            f"with no prefix); unexpected keys {stray[:5]}"
        )
    keys = [k for k in header if k.startswith(LANGUAGE_MODEL_PREFIX)]
    if not keys:
        raise ValueError(f"{where}: no 'language_model.*' tensors found")
    for key in keys:
        if header[key].dtype != FP8_DTYPE:
            continue
        scale = header.get(key + "_scale")
        rows = header[key].shape[0]
        if scale is None or scale.dtype != torch.float32 or scale.shape != (rows,):
            found = "missing" if scale is None else f"{scale.dtype} {list(scale.shape)}"
            raise ValueError(f"{where}: fp8 weight {key!r} needs a float32 '{key}_scale' of shape [{rows}], {found}")
    return keys
