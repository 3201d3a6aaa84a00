"""The model-facing stages of a run as plain functions, shared by generation, the trainer's
validation samples and the benchmarks:

  prompt text -> text features -> `Conditioning` (token layouts, RoPE tables, masks, projected text)
  seeds       -> starting noise;  image -> latent tokens (img2img)
  latent tokens -> pixels

Everything here is step-independent: it runs once per generation, so the denoising loop only runs
the transformers. `memory` is the `MemoryPlan` that says where each module computes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ideogram_app.model.ideogram4_dit import SequencePositions
from ideogram_app.model.latents import TOKEN_CHANNELS, denormalize_latents, normalize_latents, patchify, unpatchify
from ideogram_app.model.token_layout import build_token_layout
from ideogram_app.pipeline.placement import MemoryPlan


@dataclass(frozen=True)
class TokenLayout:
    """The packed sequence of one pass (see model/token_layout.py) and its precomputed attention inputs."""

    position_ids: torch.Tensor  # (B, L, 3)
    segment_ids: torch.Tensor  # (B, L)
    indicator: torch.Tensor  # (B, L)
    positions: SequencePositions


@dataclass(frozen=True)
class Conditioning:
    """What both DiTs need at every step of one prompt at one size and batch.

    The conditional pass reads `[text][image]` with the text rows already projected (`text_hidden`);
    the unconditional pass reads the image rows alone and never sees text.
    """

    num_text_tokens: int
    text_hidden: torch.Tensor  # (B, num_text_tokens, emb_dim), compute dtype
    conditional: TokenLayout
    unconditional: TokenLayout


def encode_text(text_encoder: nn.Module, text: str, memory: MemoryPlan) -> torch.Tensor:
    """Text features (1, N, F) in fp32 on the CPU (they are kept between runs of the same prompt)."""
    with memory.running(text_encoder):
        return text_encoder.encode(text).float().cpu()


def token_layout(dit: nn.Module, num_text_tokens: int, grid_h: int, grid_w: int, batch: int, device: torch.device) -> TokenLayout:
    position_ids, segment_ids, indicator = (x.to(device) for x in build_token_layout(num_text_tokens, grid_h, grid_w, batch))
    return TokenLayout(position_ids, segment_ids, indicator, dit.prepare_positions(position_ids, segment_ids))


def prepare_conditioning(
    transformer: nn.Module,
    unconditional: nn.Module,
    features: torch.Tensor,
    grid_h: int,
    grid_w: int,
    batch: int,
    memory: MemoryPlan,
) -> Conditioning:
    """Layouts, RoPE tables and masks of both passes, and the text rows projected once (on the
    conditional DiT, which owns the projection) and shared by the whole batch."""
    device = memory.device
    n_text = features.shape[1]
    conditional = token_layout(transformer, n_text, grid_h, grid_w, batch, device)
    with memory.running(transformer):
        text_hidden = transformer.project_text(features.to(device), conditional.indicator[:1, :n_text])
    return Conditioning(
        num_text_tokens=n_text,
        text_hidden=text_hidden.expand(batch, -1, -1),
        conditional=conditional,
        unconditional=token_layout(unconditional, 0, grid_h, grid_w, batch, device),
    )


def initial_noise(seeds: list[int], grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
    """(B, grid_h * grid_w, 128) standard normal, image i drawn from its own generator seeded with
    seeds[i], so an image does not depend on the batch it was made in."""
    return torch.cat([
        torch.randn(
            (1, grid_h * grid_w, TOKEN_CHANNELS), dtype=torch.float32, device=device,
            generator=torch.Generator(device).manual_seed(seed),
        )
        for seed in seeds
    ])


def encode_image(vae: nn.Module, pixels: torch.Tensor, memory: MemoryPlan) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> normalised latent tokens (B, H/16 * W/16, 128) in fp32."""
    with memory.running(vae):
        latent = vae.encode(pixels.to(memory.device, vae.dtype)).float()
    return normalize_latents(patchify(latent))


def noised_start(clean: torch.Tensor, noise: torch.Tensor, t0: float) -> torch.Tensor:
    """img2img start: the clean tokens noised to the schedule's first time t0 (0 = noise, 1 = data)."""
    return t0 * clean.to(noise.device) + (1.0 - t0) * noise


def decode_tokens(vae: nn.Module, tokens: torch.Tensor, grid_h: int, grid_w: int, memory: MemoryPlan) -> torch.Tensor:
    """Normalised latent tokens -> (B, 3, H, W) pixels in [-1, 1]."""
    with memory.running(vae):
        latent = unpatchify(denormalize_latents(tokens), grid_h, grid_w)
        return vae.decode(latent.to(vae.dtype))
