"""The packed `[pad…][text][image]` sequence the Ideogram 4 DiT reads: positions, segments, roles.

Text token k sits at (k, k, k); image token (r, c) at (65536, 65536 + r, 65536 + c) — the offset is on
all three axes. Rows with fewer text tokens are LEFT-padded (official and diffusers layout): pad tokens
get indicator 0, position (0, 0, 0) and segment -1, so they form their own attention block and never
touch real tokens. With no padding every token has segment 1, which lets the DiT skip the mask.
"""
from __future__ import annotations

import torch

LLM_TOKEN_INDICATOR = 3
OUTPUT_IMAGE_INDICATOR = 2
PADDING_INDICATOR = 0
REAL_SEGMENT = 1
PADDING_SEGMENT = -1
IMAGE_POSITION_OFFSET = 65536


def build_token_layout(
    num_text_tokens: list[int] | int, grid_h: int, grid_w: int, batch: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return `(position_ids (B, L, 3), segment_ids (B, L), indicator (B, L))` as int64 tensors.

    `num_text_tokens` is one count for every row, or a list with one count per row (then `batch` must
    equal its length). L = max(count) + grid_h * grid_w. A count of 0 gives the image-only sequence of
    the unconditional pass.
    """
    counts = [num_text_tokens] * batch if isinstance(num_text_tokens, int) else list(num_text_tokens)
    if len(counts) != batch:
        raise ValueError(f"num_text_tokens has {len(counts)} entries but batch is {batch}")
    if any(n < 0 for n in counts) or grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"need text counts >= 0 and a positive grid, got {counts} and {grid_h}x{grid_w}")
    width = max(counts)
    n_img = grid_h * grid_w
    length = width + n_img

    position_ids = torch.zeros(batch, length, 3, dtype=torch.int64)
    segment_ids = torch.full((batch, length), REAL_SEGMENT, dtype=torch.int64)
    indicator = torch.full((batch, length), OUTPUT_IMAGE_INDICATOR, dtype=torch.int64)

    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    image_pos = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1) + IMAGE_POSITION_OFFSET
    position_ids[:, width:] = image_pos

    for b, n in enumerate(counts):
        pad = width - n
        segment_ids[b, :pad] = PADDING_SEGMENT
        indicator[b, :pad] = PADDING_INDICATOR
        indicator[b, pad:width] = LLM_TOKEN_INDICATOR
        position_ids[b, pad:width] = torch.arange(n)[:, None]
    return position_ids, segment_ids, indicator
