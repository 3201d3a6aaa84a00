"""The training objective (docs/training.md, "Objective"), as plain functions.

Per sample at its own size H x W: y ~ N(mu + 0.5 ln(H W / 512^2), std^2), t = clamp(1 - sigmoid(y),
T_MIN, T_MAX) — the sampler's resolution-aware logit-normal and its clamp, so training never sees a
time the sampler cannot reach. In fp32: x_t = t x0 + (1 - t) eps, target v = x0 - eps, loss =
mean((DiT(x_t, t) - v)^2) over every element, on the raw DiT output at the image rows. The DiT is
called through the pipeline's own token layout and `run_dit`, exactly as at inference, never under
autocast, with t reaching the time embedding unrounded (`exact_time`).

Randomness is a pure function of (seed, epoch, slot): a sample's t and noise do not depend on which
process or micro-step handles it, so 2 processes equal 1 process with 2 accumulation steps, and a
resumed run draws exactly what the uninterrupted run would have.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ideogram_app.model.latents import TOKEN_CHANNELS
from ideogram_app.pipeline.conditioning import token_layout
from ideogram_app.pipeline.sampling import T_MAX, T_MIN, schedule_mean
from ideogram_app.pipeline.velocity import run_dit


def slot_generator(seed: int, epoch: int, slot: int) -> torch.Generator:
    """The CPU generator of one sample draw; `slot` is the sample's position in the epoch's order."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{slot}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def sample_time(generator: torch.Generator, height: int, width: int, mu: float = 0.0, std: float = 1.5) -> float:
    """Model time t (0 = noise, 1 = data) from the resolution-aware logit-normal, clamped to the
    sampler's range, in float64 (it is rounded once, to fp32, where it is used)."""
    y = schedule_mean(height, width, mu) + std * torch.randn((), generator=generator, dtype=torch.float64)
    return float((1.0 - torch.sigmoid(y)).clamp(T_MIN, T_MAX))


def draw(seed: int, epoch: int, slot: int, tokens: int, height: int, width: int, mu: float, std: float) -> tuple[float, torch.Tensor]:
    """(t, noise (tokens, 128) fp32) of one sample."""
    generator = slot_generator(seed, epoch, slot)
    t = sample_time(generator, height, width, mu, std)
    return t, torch.randn((tokens, TOKEN_CHANNELS), generator=generator, dtype=torch.float32)


@dataclass
class Batch:
    """Samples of one size. `text` is left-padded to the longest prompt (zeros, masked by the layout):
    projected rows (B, T, emb_dim) when `projected`, else raw features (B, T, 13 * hidden)."""

    latents: torch.Tensor  # x0, (B, N, 128) fp32
    noise: torch.Tensor  # eps, (B, N, 128) fp32
    times: torch.Tensor  # (B,) fp32
    text: torch.Tensor
    text_counts: list[int]
    grid: tuple[int, int]
    projected: bool

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.latents.to(device), self.noise.to(device), self.times.to(device), self.text.to(device),
                     self.text_counts, self.grid, self.projected)


def collate(latents: list[torch.Tensor], texts: list[torch.Tensor], times: list[float], noises: list[torch.Tensor],
            grid: tuple[int, int], projected: bool) -> Batch:
    width = max(t.shape[0] for t in texts)
    text = torch.zeros(len(texts), width, texts[0].shape[1], dtype=texts[0].dtype)
    for row, features in enumerate(texts):
        text[row, width - features.shape[0]:] = features
    return Batch(torch.stack([x.float() for x in latents]), torch.stack(noises), torch.tensor(times, dtype=torch.float32),
                 text, [t.shape[0] for t in texts], grid, projected)


@contextmanager
def exact_time(dit: nn.Module) -> Iterator[None]:
    """Feed t to the time embedding in fp32 instead of rounding it to the compute dtype first.

    The inference model rounds t to bf16 before the sinusoid (as the official code does); training on
    rounded times would teach a target at one t with an input at another. Two hooks: the embedding
    runs its sinusoid in fp32, and its first Linear gets the result back in the compute dtype.
    """
    dtype = dit.compute_dtype
    embedding = dit.t_embedding
    hooks = [
        embedding.register_forward_pre_hook(lambda _m, args: (args[0].float(), torch.float32)),
        embedding.mlp_in.register_forward_pre_hook(lambda _m, args: (args[0].to(dtype),)),
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def predict(model: nn.Module, dit: nn.Module, batch: Batch) -> torch.Tensor:
    """Raw DiT velocity at the image rows, (B, N, 128) fp32. `model` is what runs (the DiT itself or
    its DDP/FSDP wrapper); `dit` is the plain module (layout tables, compute dtype)."""
    device = batch.latents.device
    size, n_text = batch.latents.shape[0], batch.text.shape[1]
    layout = token_layout(dit, batch.text_counts, *batch.grid, size, device)
    t = batch.times.view(-1, 1, 1)
    x = torch.zeros(size, n_text + batch.latents.shape[1], TOKEN_CHANNELS, device=device)
    x[:, n_text:] = t * batch.latents + (1.0 - t) * batch.noise
    with exact_time(dit):
        if batch.projected:
            out = run_dit(model, x, batch.times, layout, text_hidden=batch.text)
        else:
            out = run_dit(model, x, batch.times, layout, llm_features=batch.text)
    return out[:, n_text:]


def flow_matching_loss(model: nn.Module, dit: nn.Module, batch: Batch) -> torch.Tensor:
    """mean((v_pred - (x0 - eps))^2) in fp32 over every element of the batch."""
    target = batch.latents - batch.noise
    return (predict(model, dit, batch).float() - target).square().mean()
