"""Interleaved 3-axis MRoPE of the Ideogram 4 DiT, with angles always computed in fp32.

Image positions start at 65536, where bf16 spacing is 512: angles computed under a bf16 autocast
collapse every image row/column onto a few values and the model paints flat images (diffusers issue
#13920). So positions and angles are fp32 with autocast disabled; only the final cos/sin are cast.
"""
from __future__ import annotations

import torch


def mrope_axis_of_pair(num_pairs: int, mrope_section: tuple[int, int, int]) -> torch.Tensor:
    """Which position axis (0 = t, 1 = h, 2 = w) drives each frequency pair.

    Qwen3-VL's interleave: pair k takes h if k ≡ 1 (mod 3) and k < 3·section[1], w if k ≡ 2 (mod 3)
    and k < 3·section[2], t otherwise.
    """
    k = torch.arange(num_pairs)
    axis = torch.zeros(num_pairs, dtype=torch.int64)
    axis[(k % 3 == 1) & (k < 3 * mrope_section[1])] = 1
    axis[(k % 3 == 2) & (k < 3 * mrope_section[2])] = 2
    return axis


def mrope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, mrope_section: tuple[int, int, int], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (B, L, 1, head_dim) for rotate-half RoPE, from (B, L, 3) positions."""
    num_pairs = head_dim // 2
    device = position_ids.device
    with torch.autocast(device_type=device.type, enabled=False):
        # 1 / θ^(2k/D) in fp32, the same expression as the reference ports, so angles agree bit for bit.
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        axis = mrope_axis_of_pair(num_pairs, mrope_section).to(device)
        pos = position_ids.to(torch.float32)[..., axis]  # (B, L, num_pairs)
        angles = pos * inv_freq
        angles = torch.cat([angles, angles], dim=-1).unsqueeze(2)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half (NeoX) RoPE on (B, L, H, D): dimension j pairs with j + D/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
