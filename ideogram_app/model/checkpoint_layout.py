"""Which DiT checkpoint layout a safetensors header holds, and the split→fused key mapping.

Layouts (spec §4.4): key naming is official *fused* (`attention.qkv`, `attention.o`) or diffusers
*split* (`attention.to_q/to_k/to_v/to_out.0`); linear weights are *plain* (bf16/fp32), official
weight-only *fp8* (e4m3 weight + fp32 [out] `weight_scale`) or bitsandbytes *nf4* (packed uint8 +
`absmax`/`quant_map`/`quant_state.bitsandbytes__nf4`). Split q/k/v are row slices 0:d, d:2d, 2d:3d of
the fused `qkv`, so conversion is a row concatenation in q, k, v order (for fp8 scales and nf4 blocks
too, since 64-blocks never straddle rows).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Mapping

import torch

from ideogram_app.model.safetensors_io import TensorInfo

NF4_SUFFIXES = (".absmax", ".quant_map", ".quant_state.bitsandbytes__nf4")
_SPLIT_KEY = re.compile(r"^(layers\.\d+\.attention\.)(to_q|to_k|to_v|to_out\.0)\.(.+)$")
_QKV_PART = {"to_q": 0, "to_k": 1, "to_v": 2}


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
            if weight is None or weight.dtype != torch.float8_e4m3fn:
                raise ValueError(f"{where}: {key!r} has no float8_e4m3fn weight next to it")
            if scale.dtype != torch.float32 or scale.shape != (weight.shape[0],):
                raise ValueError(
                    f"{where}: {key!r} must be float32 of shape [{weight.shape[0]}] (one scale per output row), "
                    f"got {scale.dtype} {list(scale.shape)}"
                )
        return DitLayout(naming, "fp8")
    fp8_without_scale = [key for key, info in header.items() if info.dtype == torch.float8_e4m3fn]
    if fp8_without_scale:
        raise ValueError(f"{where}: {fp8_without_scale[0]!r} is float8_e4m3fn but has no '.weight_scale' next to it")
    return DitLayout(naming, "plain")


def stored_shape_to_fused(shape: tuple[int, ...], part: int | None) -> tuple[int, ...]:
    """Shape the fused tensor has when a split part has `shape` (q/k/v rows are stacked ×3)."""
    if part is None:
        return shape
    return (shape[0] * 3, *shape[1:])
