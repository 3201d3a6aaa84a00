"""Velocity callables for `sampling.denoise`: `velocity(z, t, g)` returns the guided velocity.

`dit_pair_velocity` is the official arrangement on one device: the conditional DiT on `[text][image]`,
the unconditional DiT on the image rows alone (skipped when g = 1), combined by asymmetric CFG.
Other arrangements (two GPUs, compiled or LoRA-wrapped models) are other callables of the same shape.

`pass_scales` serves the "unconditional LoRA" arrangement, where one DiT runs both passes and some
of its LoRAs belong to one pass only: before each pass the named LoRAs get that pass's scales.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from ideogram_app.lora import loaded, set_scale

from ideogram_app.model.latents import TOKEN_CHANNELS
from ideogram_app.pipeline.conditioning import Conditioning, TokenLayout
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.pipeline.sampling import Velocity, guided_velocity


def run_dit(
    dit: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    layout: TokenLayout,
    text_hidden: torch.Tensor | None = None,
    llm_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DiT forward over a prepared layout. Text rows come projected once (`text_hidden`, as at
    inference), as raw features the DiT projects itself (`llm_features`, when the projection
    trains), or not at all (the unconditional pass)."""
    return dit(
        x=x, t=t, llm_features=llm_features, position_ids=layout.position_ids, segment_ids=layout.segment_ids,
        indicator=layout.indicator, text_hidden=text_hidden, positions=layout.positions,
    )


@contextmanager
def lora_scales(model: nn.Module, scales: Mapping[str, float] | None) -> Iterator[None]:
    """Run a block with some of `model`'s LoRAs at other scales, then put the loaded scales back."""
    if not scales:
        yield
        return
    before = {name: loaded(model)[name].scale for name in scales}
    for name, scale in scales.items():
        set_scale(model, name, scale)
    try:
        yield
    finally:
        for name, scale in before.items():
            set_scale(model, name, scale)


def dit_pair_velocity(
    transformer: nn.Module,
    unconditional: nn.Module,
    conditioning: Conditioning,
    memory: MemoryPlan,
    pass_scales: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
) -> Velocity:
    """The guided velocity of the two DiTs on `memory.device`. The conditional input buffer is made
    once; its text rows stay zero (the text enters through `text_hidden`). `pass_scales` = (LoRA
    scales during the conditional pass, during the unconditional pass), for a DiT that runs both."""
    cond_scales, uncond_scales = pass_scales or (None, None)
    n_text = conditioning.num_text_tokens
    batch, length = conditioning.conditional.indicator.shape
    cond_input = torch.zeros(batch, length, TOKEN_CHANNELS, device=memory.device)

    def velocity(z: torch.Tensor, t: float, g: float) -> torch.Tensor:
        t_batch = torch.full((batch,), t, dtype=torch.float32, device=memory.device)
        cond_input[:, n_text:] = z
        with memory.running(transformer), lora_scales(transformer, cond_scales):
            v_cond = run_dit(transformer, cond_input, t_batch, conditioning.conditional, conditioning.text_hidden)[:, n_text:]
        v_uncond = None
        if g != 1.0:
            with memory.running(unconditional), lora_scales(unconditional, uncond_scales):
                v_uncond = run_dit(unconditional, z, t_batch, conditioning.unconditional)
        return guided_velocity(v_cond, v_uncond, g)

    return velocity
