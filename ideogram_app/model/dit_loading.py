"""Load an Ideogram 4 DiT from any published layout, streaming, in bounded host memory.

Steps, all before any tensor data is read: resolve the file(s), read the header, detect the layout
(fused/split × plain/fp8/nf4), read or infer the config, build the model on the meta device, and check
every key and shape against it (a wrong file fails with the first unexpected/missing keys). Then each
tensor is read, converted on its own (cast, fp8 dequantise, q/k/v row placement) and assigned, so the
host never holds more than the model plus one tensor — no fp32 copy of the model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping

import torch
from torch import nn

from ideogram_app.model.checkpoint_layout import (
    NF4_SUFFIXES,
    DitLayout,
    detect_dit_layout,
    fused_key,
    stored_shape_to_fused,
)
from ideogram_app.model.fp8 import DEQUANT_WORKSPACE_ELEMENTS, dequantize_fp8, swap_linears_for_fp8
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.nf4 import nf4_linear, require_nf4_support, widen_nf4_quant_state
from ideogram_app.model.safetensors_io import TensorInfo, assign_state_dict, iter_tensors, read_headers, resolve_safetensors

Fp8Mode = Literal["dequantize", "keep"]


def _describe(files: list[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} shards)"


def _linear_prefix(fused: str) -> tuple[str, str] | None:
    """Split a quantisation key into (linear name, suffix), e.g. ('layers.0.attention.qkv', '.weight_scale')."""
    for suffix in (".weight_scale", *(".weight" + s for s in NF4_SUFFIXES)):
        if fused.endswith(suffix):
            return fused[: -len(suffix)], suffix
    return None


def read_dit_config(folder: Path, fused_shapes: Mapping[str, tuple[int, ...]], where: str) -> Ideogram4Config:
    """`config.json` next to the weights (official or diffusers names), else inferred from shapes."""
    config_file = folder / "config.json"
    if config_file.is_file():
        try:
            return Ideogram4Config.from_dict(json.loads(config_file.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{config_file}: not a usable Ideogram 4 DiT config ({exc})") from None
    try:
        return Ideogram4Config.from_shapes(fused_shapes)
    except ValueError as exc:
        raise ValueError(f"{where}: no config.json next to it and {exc}") from None


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


def _place(state: dict[str, torch.Tensor], key: str, part: int | None, tensor: torch.Tensor) -> None:
    """Store `tensor` under `key`, or as rows `part` of a fused q/k/v tensor allocated on first use."""
    if part is None:
        state[key] = tensor
        return
    if key not in state:
        state[key] = torch.empty(stored_shape_to_fused(tuple(tensor.shape), part), dtype=tensor.dtype, device=tensor.device)
    rows = tensor.shape[0]
    state[key][part * rows : (part + 1) * rows].copy_(tensor)


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
    memory). NF4 needs CUDA and bitsandbytes.
    """
    if fp8 not in ("dequantize", "keep"):
        raise ValueError(f"fp8 must be 'dequantize' or 'keep', got {fp8!r}")
    device = torch.device(device)
    files = resolve_safetensors(path, subfolder)
    where = _describe(files)
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
    quantised = {p[0] for key in fused_shapes if (p := _linear_prefix(key))}
    _check_against_model(header, layout, model, quantised, where, cfg)

    if layout.weights == "fp8" and fp8 == "keep":
        swap_linears_for_fp8(model, quantised)
    state = _stream_state(header, layout, quantised, device, dtype, keep_fp8=(fp8 == "keep"))
    if layout.weights == "nf4":
        _install_nf4(model, state, quantised, device, dtype)
        model.load_state_dict(state, strict=False, assign=True)  # keys were checked against the header above
        left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left_on_meta:
            raise ValueError(f"{where}: NF4 load left tensors unset: {left_on_meta[:5]}")
    else:
        assign_state_dict(model, state, where)
    return model.eval().requires_grad_(False)


def _stream_state(
    header: Mapping[str, TensorInfo], layout: DitLayout, quantised: set[str], device: torch.device, dtype: torch.dtype, keep_fp8: bool
) -> dict[str, torch.Tensor]:
    """Read every tensor once, converting it on its own; q/k/v parts land in their fused rows."""
    state: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    scale_keys = [k for k in header if k.endswith(".weight_scale")]
    for key, tensor in iter_tensors(header, scale_keys):  # tiny, read first so weights can be dequantised
        fused, part = fused_key(key)
        _place(scales, fused, part, tensor.to(device))

    def copied_at_once(key: str) -> bool:
        """Tensors that live only until converted: fp8 weights being dequantised, q/k/v parts being
        copied into their fused rows. (NF4 data is handed over as read, so never.)"""
        fused, part = fused_key(key)
        if layout.weights == "nf4":
            return False
        dequantised = layout.weights == "fp8" and not keep_fp8 and fused.endswith(".weight") and fused[: -len(".weight")] in quantised
        return dequantised or part is not None

    others = [k for k in header if not k.endswith(".weight_scale")]
    workspace = torch.empty(DEQUANT_WORKSPACE_ELEMENTS if scales and not keep_fp8 else 0, dtype=torch.float32, device=device)
    for key, tensor in iter_tensors(header, others, transient=copied_at_once):
        fused, part = fused_key(key)
        owner = fused[: -len(".weight")] if fused.endswith(".weight") else None
        if layout.weights == "fp8" and owner in quantised:
            tensor = tensor.to(device)
            if not keep_fp8:
                scale = scales[owner + ".weight_scale"]
                if part is not None:
                    rows = tensor.shape[0]
                    scale = scale[part * rows : (part + 1) * rows]
                tensor = dequantize_fp8(tensor, scale, dtype, workspace)
        elif layout.weights == "nf4" and (owner in quantised or _linear_prefix(fused) is not None):
            # Packed data and statistics stay on the host in their stored dtype until Linear4bit takes them.
            if fused.endswith((".quant_map", ".quant_state.bitsandbytes__nf4")):
                part = None  # the same code book / metadata for q, k and v; the shape is widened below
        elif tensor.is_floating_point():
            tensor = tensor.to(device=device, dtype=dtype)
        else:
            tensor = tensor.to(device)
        _place(state, fused, part, tensor)
    if layout.weights == "fp8" and keep_fp8:
        state.update(scales)
    if layout.naming == "split" and layout.weights == "nf4":
        for name in quantised:
            if name.endswith(".attention.qkv"):
                key = name + ".weight.quant_state.bitsandbytes__nf4"
                state[key] = widen_nf4_quant_state(state[key], 3)
    return state


def _install_nf4(model: nn.Module, state: dict[str, torch.Tensor], names: set[str], device: torch.device, dtype: torch.dtype) -> None:
    """Replace each NF4 Linear by a bitsandbytes Linear4bit holding the stored packed data."""
    for name in sorted(names):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        stats = {suffix[1:]: state.pop(name + ".weight" + suffix) for suffix in NF4_SUFFIXES}
        bias = state.pop(name + ".bias", None)
        setattr(parent, child, nf4_linear(linear.in_features, linear.out_features, state.pop(name + ".weight"), stats, bias, device, dtype))
