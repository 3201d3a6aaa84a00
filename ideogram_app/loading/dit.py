"""Load an Ideogram 4 DiT from any published layout, streaming, in bounded host memory.

Steps, all before any tensor data is read: resolve the file(s), read the header, detect the layout
(fused/split × plain/fp8/nf4, `checkpoint_layout.py`), read or infer the config, build the model on the
meta device, and check every key and shape against it (a wrong file fails with the first
unexpected/missing keys). Then `streaming.py` reads each tensor once, converts it on its own (cast,
fp8 kept or dequantised by `conversion.py`, q/k/v row placement) and the model takes it, so the host
never holds more than the model plus one tensor — no fp32 copy of the model.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ideogram_app.loading.checkpoint_layout import (
    NF4_SUFFIXES,
    DitLayout,
    detect_dit_layout,
    fused_key,
    quantised_linear,
    stored_shape_to_fused,
    widen_nf4_quant_state,
)
from ideogram_app.loading.config import dataclass_from_config, read_config
from ideogram_app.loading.conversion import Fp8Mode, check_fp8_mode, prepare_fp8_linears
from ideogram_app.loading.safetensors_io import TensorInfo, describe_files, read_headers, resolve_safetensors
from ideogram_app.loading.streaming import Target, assign_state_dict, stream_state_dict
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.nf4 import nf4_linear, require_nf4_support

# diffusers' config.json names -> `Ideogram4Config` fields (the official dataclass names). diffusers
# also stores `attention_head_dim` instead of `emb_dim`: emb_dim = attention_head_dim * num_heads.
DIFFUSERS_CONFIG_NAMES = {"adaln_dim": "adanln_dim", "num_attention_heads": "num_heads"}
_NF4_PACKED_W2 = "layers.0.feed_forward.w2.weight"


def dit_config_from_dict(raw: Mapping[str, Any], source: str = "config") -> Ideogram4Config:
    """Official names (`emb_dim`, `num_heads`, `adanln_dim`) or diffusers names (`attention_head_dim`,
    `num_attention_heads`, `adaln_dim`); other keys (`_class_name`, `quantization_config`, …) are ignored."""
    try:
        values = {DIFFUSERS_CONFIG_NAMES.get(key, key): value for key, value in raw.items()}
        if "attention_head_dim" in values and values.get("emb_dim") is None:
            heads = values.get("num_heads") or Ideogram4Config.num_heads
            values["emb_dim"] = int(values["attention_head_dim"]) * int(heads)
        return dataclass_from_config(Ideogram4Config, values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: not a usable Ideogram 4 DiT config ({exc})") from None


def dit_config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> Ideogram4Config:
    """Infer the shape-bearing fields from a checkpoint's fused-name tensor shapes (fp8, nf4 or plain).

    `rope_theta`, `mrope_section` and `norm_eps` are not in any shape: they keep the released values,
    which only fit a head dim of 256 — tiny/other models must ship a config.json.
    """

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ValueError(f"cannot infer the DiT config: checkpoint has no {key!r}")
        return shapes[key]

    emb_dim = need("embed_image_indicator.weight")[1]
    head_dim = need("layers.0.attention.norm_q.weight")[0]
    layer_ids = {int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.", k))}
    if _NF4_PACKED_W2 + ".quant_state.bitsandbytes__nf4" in shapes:  # packed 4-bit: [out·in/2, 1]
        intermediate = need(_NF4_PACKED_W2)[0] * 2 // emb_dim
    else:
        intermediate = need(_NF4_PACKED_W2)[1]
    return Ideogram4Config(
        in_channels=need("final_layer.linear.bias")[0],
        num_layers=len(layer_ids),
        emb_dim=emb_dim,
        num_heads=emb_dim // head_dim,
        intermediate_size=intermediate,
        adanln_dim=need("adaln_proj.bias")[0],
        llm_features_dim=need("llm_cond_norm.weight")[0],
    )


def read_dit_config(folder: Path, fused_shapes: Mapping[str, tuple[int, ...]], where: str) -> Ideogram4Config:
    """`config.json` next to the weights (official or diffusers names), else inferred from shapes."""

    def infer() -> Ideogram4Config:
        try:
            return dit_config_from_shapes(fused_shapes)
        except ValueError as exc:
            raise ValueError(f"{where}: no config.json next to it and {exc}") from None

    return read_config(folder / "config.json", dit_config_from_dict, infer)


def _expected_keys(model: nn.Module, layout: DitLayout, quantised: set[str]) -> dict[str, tuple[int, ...] | None]:
    """Fused-name keys the checkpoint must hold, with their stored shapes (None = not checked)."""
    expected: dict[str, tuple[int, ...] | None] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in quantised:
        out_features, in_features = expected[name + ".weight"]
        if layout.weights == "fp8":
            expected[name + ".weight_scale"] = (out_features,)
        else:
            expected[name + ".weight"] = (out_features * in_features // 2, 1)
            for suffix in NF4_SUFFIXES:
                expected[name + ".weight" + suffix] = None
    return expected


def _check_against_model(
    header: Mapping[str, TensorInfo], layout: DitLayout, model: nn.Module, quantised: set[str], where: str, cfg: Ideogram4Config
) -> None:
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    not_linear = sorted(quantised - linears)
    expected = _expected_keys(model, layout, quantised & linears)
    parts: dict[str, set[int]] = {}
    unexpected: list[str] = []
    for key, info in header.items():
        fused, part = fused_key(key)
        if fused not in expected:
            unexpected.append(key)
            continue
        parts.setdefault(fused, set()).add(-1 if part is None else part)
        want = expected[fused]
        got = stored_shape_to_fused(info.shape, part)
        if want is not None and got != want:
            raise ValueError(f"{where}: {key!r} has shape {list(info.shape)}, the DiT ({cfg}) expects {list(want)} for {fused!r}")
    missing = sorted(k for k in expected if k not in parts)
    missing += sorted(f"{k} (q/k/v part {sorted({0, 1, 2} - p)})" for k, p in parts.items() if -1 not in p and p != {0, 1, 2})
    if unexpected or missing or not_linear:
        raise ValueError(
            f"{where}: does not match the Ideogram 4 DiT ({layout.naming} keys, {layout.weights} weights, "
            f"{cfg.num_layers} layers): unexpected keys {sorted(unexpected)[:5]} ({len(unexpected)} in total); "
            f"missing keys {missing[:5]} ({len(missing)} in total)"
            + (f"; quantised entries for non-Linear modules {not_linear[:5]}" if not_linear else "")
        )


def _targets(header: Mapping[str, TensorInfo], layout: DitLayout, quantised: set[str]) -> dict[str, Target]:
    """Stored key -> fused model key. NF4 data and statistics stay as stored; the code book and the
    quant-state metadata are the same for q, k and v, so one copy is kept (its shape is widened later)."""
    targets = {}
    for key in header:
        fused, part = fused_key(key)
        as_stored = False
        if layout.weights == "nf4":
            owner = fused[: -len(".weight")] if fused.endswith(".weight") else None
            as_stored = owner in quantised or quantised_linear(fused) is not None
            if fused.endswith((".quant_map", ".quant_state.bitsandbytes__nf4")):
                part = None
        targets[key] = Target(fused, part, as_stored)
    return targets


def load_transformer(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    fp8: Fp8Mode = "dequantize",
    subfolder: str = "transformer",
) -> Ideogram4DiT:
    """Load a DiT from a repo root (`subfolder`), a component folder, a .safetensors file or a shard index.

    `dtype` is the compute dtype. FP8 checkpoints are dequantised once at load (`fp8="dequantize"`,
    fastest per step) or kept as fp8 `Fp8Linear`s widened on every forward (`fp8="keep"`, half the
    memory); see `conversion.py`. NF4 needs CUDA and bitsandbytes.
    """
    check_fp8_mode(fp8)
    device = torch.device(device)
    files = resolve_safetensors(path, subfolder)
    where = describe_files(files)
    header = read_headers(files)
    layout = detect_dit_layout(header, where)
    if layout.weights == "nf4":
        require_nf4_support(device, where)

    fused_shapes = {}
    for key, info in header.items():
        fused, part = fused_key(key)
        fused_shapes[fused] = stored_shape_to_fused(info.shape, part)
    cfg = read_dit_config(files[0].parent, fused_shapes, where)
    with torch.device("meta"):
        model = Ideogram4DiT(cfg)
    quantised = {p[0] for key in fused_shapes if (p := quantised_linear(key))}
    _check_against_model(header, layout, model, quantised, where, cfg)

    if layout.weights == "fp8":
        prepare_fp8_linears(model, quantised, fp8)
    state = stream_state_dict(header, _targets(header, layout, quantised), device, dtype, fp8)
    if layout.weights == "nf4":
        if layout.naming == "split":
            for name in quantised:
                if name.endswith(".attention.qkv"):
                    key = name + ".weight.quant_state.bitsandbytes__nf4"
                    state[key] = widen_nf4_quant_state(state[key], 3)
        _install_nf4(model, state, quantised, device, dtype)
        model.load_state_dict(state, strict=False, assign=True)  # keys were checked against the header above
        left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left_on_meta:
            raise ValueError(f"{where}: NF4 load left tensors unset: {left_on_meta[:5]}")
    else:
        assign_state_dict(model, state, where)
    return model.eval().requires_grad_(False)


def _install_nf4(model: nn.Module, state: dict[str, torch.Tensor], names: set[str], device: torch.device, dtype: torch.dtype) -> None:
    """Replace each NF4 Linear by a bitsandbytes Linear4bit holding the stored packed data."""
    for name in sorted(names):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        stats = {suffix[1:]: state.pop(name + ".weight" + suffix) for suffix in NF4_SUFFIXES}
        bias = state.pop(name + ".bias", None)
        setattr(parent, child, nf4_linear(linear.in_features, linear.out_features, state.pop(name + ".weight"), stats, bias, device, dtype))
