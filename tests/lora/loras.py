"""Random LoRAs for the tiny DiT, written as real safetensors files in every published key layout.

The ground truth is a dict {module name: (A, B, alpha)} in one of two namings, and each writer below
spells it the way that producer does (docs/lora.md's table), independently of `ideogram_app.lora`:
- fused truth (our names: `attention.qkv`, `attention.o`): native/ComfyUI, kohya, DiffSynth;
- split truth (diffusers names: `to_q/to_k/to_v`, `to_out.0`, separate A's): diffusers, OneTrainer.
`diffusers_deltas` turns either into {diffusers module: s·(alpha/r)·B@A}, the hand-merge oracle.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.fixtures.tiny_dit import TINY_DIT_SIZES

D = TINY_DIT_SIZES["num_heads"] * TINY_DIT_SIZES["head_dim"]
FF = TINY_DIT_SIZES["intermediate_size"]
ADALN = TINY_DIT_SIZES["adaln_dim"]
LAYERS = TINY_DIT_SIZES["num_layers"]
LLM_DIM = 416

BLOCK_SHAPES = {  # (out, in) per block module, our names
    "attention.qkv": (3 * D, D), "attention.o": (D, D), "feed_forward.w1": (FF, D), "feed_forward.w2": (D, FF),
    "feed_forward.w3": (FF, D), "adaln_modulation": (4 * D, ADALN),
}
GLOBAL_SHAPES = {
    "input_proj": (D, 128), "llm_cond_proj": (D, LLM_DIM), "t_embedding.mlp_in": (D, D), "t_embedding.mlp_out": (D, D),
    "adaln_proj": (ADALN, D), "final_layer.linear": (128, D), "final_layer.adaln_modulation": (D, ADALN),
}
SPLIT_NAMES = {"attention.to_q": "attention.qkv", "attention.to_k": "attention.qkv", "attention.to_v": "attention.qkv",
               "attention.to_out.0": "attention.o"}


def _pair(g, out_f, in_f, rank, alpha, dtype):
    a = torch.randn(rank, in_f, generator=g) / in_f**0.5
    b = torch.randn(out_f, rank, generator=g) * (0.6 / rank**0.5)
    return a.to(dtype), b.to(dtype), float(alpha)


def fused_truth(seed=0, rank=4, alpha=2.0, globals_=False, dtype=torch.float32, layers=range(LAYERS)):
    """A LoRA on every block module (plus the global linears with `globals_`), our fused names."""
    g = torch.Generator().manual_seed(seed)
    names = {f"layers.{i}.{m}": s for i in layers for m, s in BLOCK_SHAPES.items()}
    if globals_:
        names |= GLOBAL_SHAPES
    return {name: _pair(g, *shape, rank, alpha, dtype) for name, shape in names.items()}


def split_truth(seed=0, ranks=(4, 3, 5), alpha=3.0, globals_=False, dtype=torch.float32):
    """diffusers names, separate A's (and different ranks) for q, k and v."""
    g = torch.Generator().manual_seed(seed)
    truth = {}
    for i in range(LAYERS):
        for part, rank in zip(("to_q", "to_k", "to_v"), ranks):
            truth[f"layers.{i}.attention.{part}"] = _pair(g, D, D, rank, alpha, dtype)
        truth[f"layers.{i}.attention.to_out.0"] = _pair(g, D, D, 4, alpha, dtype)
        for m in ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaln_modulation"):
            truth[f"layers.{i}.{m}"] = _pair(g, *BLOCK_SHAPES[m], 4, alpha, dtype)
    if globals_:
        truth |= {name: _pair(g, *shape, 4, alpha, dtype) for name, shape in GLOBAL_SHAPES.items()}
    return truth


def our_names(truth):
    """The fused module names a truth lands on (to_q/to_k/to_v → attention.qkv, to_out.0 → attention.o)."""
    names = set()
    for name in truth:
        block, sep, tail = name.partition(".attention.")
        names.add(f"{block}.{SPLIT_NAMES.get('attention.' + tail, 'attention.' + tail)}" if sep else name)
    return names


def diffusers_deltas(truth, scale=1.0):
    """{diffusers module name: fp32 weight delta} — fused qkv rows go to to_q/to_k/to_v by thirds."""
    deltas = {}
    for name, (a, b, alpha) in truth.items():
        delta = scale * (alpha / a.shape[0]) * (b.double() @ a.double())
        if name.endswith(".attention.qkv"):
            for part, rows in zip(("to_q", "to_k", "to_v"), delta.chunk(3)):
                deltas[name[: -len("qkv")] + part] = rows
        elif name.endswith(".attention.o"):
            deltas[name[: -len("o")] + "to_out.0"] = delta
        else:
            deltas[name] = delta
    return {k: v.float() for k, v in deltas.items()}


def add_deltas(deltas_list):
    total = {}
    for deltas in deltas_list:
        for k, v in deltas.items():
            total[k] = total.get(k, 0) + v
    return total


def hand_merge(model, deltas):
    """W + delta on diffusers' model, in place."""
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = model.get_submodule(name).weight
            weight.copy_(weight + delta.to(weight.dtype))
    return model


def _alpha(value):
    return torch.tensor(value, dtype=torch.float32)


# --- writers, one per producer -------------------------------------------------------------------

def write_comfyui(path, truth, prefix="diffusion_model.", down=".lora_A.weight", up=".lora_B.weight", alpha=True):
    state = {}
    for name, (a, b, al) in truth.items():
        state[f"{prefix}{name}{down}"] = a
        state[f"{prefix}{name}{up}"] = b
        if alpha:
            state[f"{prefix}{name}.alpha"] = _alpha(al)
    save_file(state, path)
    return Path(path)


def write_kohya(path, truth, prefix="lora_unet_"):
    state = {}
    for name, (a, b, al) in truth.items():
        stem = prefix + name.replace(".", "_")
        state[stem + ".lora_down.weight"] = a
        state[stem + ".lora_up.weight"] = b
        state[stem + ".alpha"] = _alpha(al)
    save_file(state, path)
    return Path(path)


def write_diffsynth(path, truth):
    """No prefix, PEFT `.default` segment, no alpha (the truth's alpha must equal its rank)."""
    state = {}
    for name, (a, b, al) in truth.items():
        assert al == a.shape[0], "DiffSynth files carry no alpha: make the truth's alpha equal its rank"
        state[f"{name}.lora_A.default.weight"] = a
        state[f"{name}.lora_B.default.weight"] = b
    save_file(state, path)
    return Path(path)


def write_diffusers(path, truth, metadata=True):
    """`transformer.` + PEFT keys; alpha in `lora_adapter_metadata` as diffusers' save_lora_weights writes it
    (with metadata=False the truth's alpha must equal the rank: diffusers then assumes scale 1)."""
    state = {}
    for name, (a, b, al) in truth.items():
        state[f"transformer.{name}.lora_A.weight"] = a
        state[f"transformer.{name}.lora_B.weight"] = b
    meta = None
    if metadata:
        ranks = {a.shape[0] for a, _, _ in truth.values()}
        alphas = {al for _, _, al in truth.values()}
        assert len(alphas) == 1
        common = 4 if 4 in ranks else min(ranks)
        config = {"r": common, "lora_alpha": alphas.pop(), "target_modules": sorted(truth),
                  "rank_pattern": {f"^{n}": a.shape[0] for n, (a, _, _) in truth.items() if a.shape[0] != common},
                  "alpha_pattern": {}}
        meta = {"format": "pt", "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    else:
        assert all(al == a.shape[0] for a, _, al in truth.values())
    save_file(state, path, metadata=meta)
    return Path(path)


def write_onetrainer(path, truth):
    """`transformer.` prefix, split q/k/v, kohya `lora_down/lora_up` + `alpha` tensors."""
    state = {}
    for name, (a, b, al) in truth.items():
        state[f"transformer.{name}.lora_down.weight"] = a
        state[f"transformer.{name}.lora_up.weight"] = b
        state[f"transformer.{name}.alpha"] = _alpha(al)
    save_file(state, path)
    return Path(path)
