"""Optimisers and learning-rate schedules.

- fp32 parameters (LoRA factors): PyTorch's AdamW (fused on CUDA).
- bf16 parameters (full fine-tune): `Bf16AdamW` keeps both moments in fp32 and computes the update
  in fp32, then writes the weight back with stochastic rounding: a plain bf16 update would lose every
  step smaller than half a bf16 ulp (at lr 1e-5 most of them), and fp32 master weights would cost
  4 more bytes per parameter. The rounding noise comes from a generator seeded by (seed, step,
  parameter), so processes agree and a resumed run rounds exactly as the uninterrupted one.
- `--optimizer adamw8bit`: bitsandbytes' AdamW8bit.

Schedules: linear warmup from 0 over `--lr_warmup_steps`, then constant, linear to 0, or cosine to 0.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ideogram_app.train.config import TrainConfig


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little") & (2**63 - 1)


def stochastic_round_bf16(value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 → bf16, rounding up in magnitude with probability equal to the dropped fraction (unbiased)."""
    noise = torch.randint(0, 1 << 16, value.shape, generator=generator, device=value.device, dtype=torch.int32)
    return ((value.view(torch.int32) + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor sharded by FSDP (a DTensor); the tensor itself otherwise."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class Bf16AdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments, same formula as torch.optim.AdamW) with
    fp32 moments; fp32 parameters are updated exactly, bf16 ones through stochastic rounding."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, seed: int = 0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.seed = seed

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader casts every floating state to its parameter's dtype, which would turn the fp32
        moments into bf16 on resume; they are put back in fp32 afterwards."""
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]  # indices or names
        moments = {i: {k: v for k, v in saved.items() if k != "step"} for i, saved in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, param in zip(saved_ids, params):
            for key, value in moments.get(saved_id, {}).items():
                self.state[param][key] = value.to(param.device, torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Bf16AdamW does not take a closure")
        for group_index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            for index, param in enumerate(group["params"]):
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
                state["step"] += 1
                step = int(state["step"])
                # Every operation is per element, so a sharded (FSDP) weight is updated on its own shard:
                # plain tensors, none of DTensor's per-operation dispatch on the ~460 DiT parameters.
                weight, exp_avg, exp_avg_sq = _local(param), _local(state["exp_avg"]), _local(state["exp_avg_sq"])
                grad = _local(param.grad).float()
                value = weight.float().mul_(1 - group["lr"] * group["weight_decay"])
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
                value.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1**step))
                if param.dtype == torch.bfloat16:
                    generator = torch.Generator(weight.device).manual_seed(_seed(self.seed, step, group_index, index))
                    weight.copy_(stochastic_round_bf16(value, generator))
                else:
                    weight.copy_(value)


def build_optimizer(c: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if c.optimizer == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, lr=c.learning_rate, weight_decay=c.weight_decay)
    if all(p.dtype == torch.float32 for p in params):
        fused = all(p.device.type == "cuda" for p in params)
        return torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay, fused=fused or None)
    return Bf16AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay, seed=c.seed)


def lr_factor(step: int, total: int, warmup: int, shape: str) -> float:
    """Multiplier of the peak lr at optimiser step `step` (0-based): warmup reaches 1 at step `warmup`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if shape == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if shape == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(c: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, c.lr_warmup_steps, c.lr_scheduler)
    )
