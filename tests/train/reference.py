"""The independent side of the objective tests: diffusers' Ideogram4Transformer2DModel built from the
same tiny checkpoint file, the training formula written out from docs/training.md ("Objective")
with its constants typed in, and the gradient bookkeeping between diffusers' split names and ours."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import Ideogram4Transformer2DModel
from safetensors.torch import load_file

from ideogram_app.model.token_layout import build_token_layout

T_MIN_DOC = 1.0 / (1.0 + math.exp(9.0))  # logSNR 18
T_MAX_DOC = 1.0 / (1.0 + math.exp(-7.5))  # logSNR -15
SPLIT = {"to_q": 0, "to_k": 1, "to_v": 2}


def diffusers_dit(component: Path) -> Ideogram4Transformer2DModel:
    """diffusers' model with the weights of `component/diffusion_pytorch_model.safetensors` (fused
    bf16 keys, split here by rows), in fp32."""
    config = json.loads((component / "config.json").read_text())
    raw = load_file(component / "diffusion_pytorch_model.safetensors")
    state = {}
    for key, value in raw.items():
        value = value.float()
        if ".attention.qkv." in key:
            for part, rows in zip(("to_q", "to_k", "to_v"), value.chunk(3)):
                state[key.replace(".qkv.", f".{part}.")] = rows.contiguous()
        elif ".attention.o." in key:
            state[key.replace(".attention.o.", ".attention.to_out.0.")] = value
        else:
            state[key] = value
    model = Ideogram4Transformer2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    model.load_state_dict(state, strict=True)
    return model.float()


def ref_draw(generator: torch.Generator, height: int, width: int, tokens: int) -> tuple[float, torch.Tensor]:
    """t from the formula (mean 0.5 ln(HW/512^2), std 1.5, clamp to the sampler's range), then noise."""
    z = torch.randn((), generator=generator, dtype=torch.float64).item()
    sigma = 1.0 / (1.0 + math.exp(-(0.5 * math.log(height * width / 512**2) + 1.5 * z)))
    t = min(max(1.0 - sigma, T_MIN_DOC), T_MAX_DOC)
    return t, torch.randn((tokens, 128), generator=generator, dtype=torch.float32)


def reference_loss(model: Ideogram4Transformer2DModel, x0: torch.Tensor, noise: torch.Tensor, t: float,
                   features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """One sample: x_t = t x0 + (1 - t) eps, target x0 - eps, MSE on the raw output at image rows."""
    n_text = features.shape[1]
    pos, seg, ind = build_token_layout(n_text, *grid)
    length = pos.shape[1]
    x = torch.zeros(1, length, 128)
    x[0, n_text:] = t * x0 + (1 - t) * noise
    encoder = torch.zeros(1, length, features.shape[-1])
    encoder[0, :n_text] = features[0]
    out = model(x, torch.tensor([t], dtype=torch.float32), encoder, pos, seg, ind, return_dict=False)[0]
    return (out[0, n_text:] - (x0 - noise)).square().mean()


def fused_grad(model: Ideogram4Transformer2DModel, name: str) -> torch.Tensor:
    """The gradient of our parameter `name` from diffusers' (split) parameters."""
    if ".attention.qkv." in name:
        return torch.cat([model.get_parameter(name.replace(".qkv.", f".{p}.")).grad for p in SPLIT])
    if ".attention.o." in name:
        return model.get_parameter(name.replace(".attention.o.", ".attention.to_out.0.")).grad
    return model.get_parameter(name).grad


def merge_lora(model: Ideogram4Transformer2DModel, module: str, down: torch.Tensor, up: torch.Tensor, factor: float) -> None:
    """W += factor * B A on diffusers' model (the fused qkv delta split by rows)."""
    delta = factor * (up.double() @ down.double()).float()
    with torch.no_grad():
        if module.endswith(".attention.qkv"):
            for part, rows in zip(SPLIT, delta.chunk(3)):
                model.get_parameter(module[: -len("qkv")] + part + ".weight").add_(rows)
        elif module.endswith(".attention.o"):
            model.get_parameter(module[: -len("o")] + "to_out.0.weight").add_(delta)
        else:
            model.get_parameter(module + ".weight").add_(delta)
