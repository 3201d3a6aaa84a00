"""Region edit: regenerate one box of an image and keep everything else (docs/pipeline.md, "Region edit").

A region edit is img2img with a mask. The input image is encoded and noised to the start time t0 as
for img2img; after every Euler step the latent tokens outside the region are put back to where the
input's own trajectory is at that time, `noised_start(clean, noise, t_next)` with the run's seeded
noise, so the model denoises the region *in the context of* the untouched rest (it sees the whole
image and the whole caption at every step). After the last step the outside is the input's clean
latents exactly. The boundary is a linear ramp a few tokens wide (`FEATHER_TOKENS`), so the new
content blends in instead of ending at a hard seam.

Pixels: the VAE decoder mixes every latent into every pixel (its middle block is attention), and a
round trip through the VAE is not lossless, so decoding alone would soften the untouched area a
little at every edit. The decoded image is therefore blended back onto the input image's own pixels
with the same ramp, upsampled bilinearly to pixels (`paste_outside`): beyond the ramp the result *is*
the input image.

Mask convention: 1 = regenerate (inside the box), 0 = keep the input, in between = the ramp. Time
convention as everywhere: t = 0 is noise, t = 1 is data (sampling.py).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ideogram_app.caption.bbox import bbox_to_pixels
from ideogram_app.caption.rules import BBOX_GRID, check_bbox
from ideogram_app.pipeline.conditioning import noised_start
from ideogram_app.pipeline.sampling import AfterStep
from ideogram_app.pipeline.sizes import MULTIPLE, token_grid

FEATHER_TOKENS = 2  # width of the ramp outside the box, in tokens (2 tokens = 32 px)


def checked_region(region: Any) -> tuple[int, int, int, int]:
    """An `edit_region` as four ints, or ValueError with the caption verifier's own bbox message
    (one rule for boxes, wherever they come from). Integral floats (JSON clients send 100.0) count
    as whole numbers."""
    if isinstance(region, (str, bytes)) or not hasattr(region, "__iter__"):
        raise ValueError(f"edit_region must be a box [y_min, x_min, y_max, x_max] on the 0-{BBOX_GRID} grid, "
                         f"got {region!r}")
    values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in region]
    problems = []
    check_bbox(values, "edit_region", problems)
    if problems:
        raise ValueError("; ".join(f"edit_region {issue.message}" for issue in problems))
    return tuple(values)


def region_mask(region: Sequence[int], width: int, height: int, feather: int = FEATHER_TOKENS) -> torch.Tensor:
    """The edit mask on the latent token grid, (grid_h * grid_w,) float32 in row-major token order.

    The box goes to pixels through caption/bbox.py and then to token units (one token per
    MULTIPLE x MULTIPLE pixels). A token whose centre lies inside the box gets 1; one whose centre
    lies a distance d (in tokens, the larger of the row and column distance, so the ramp has square
    corners like the box) outside gets 1 - d/feather, clamped at 0; `feather=0` is a hard mask."""
    x0, y0, x1, y1 = (v / MULTIPLE for v in bbox_to_pixels(list(region), width, height))
    grid_h, grid_w = token_grid(width, height)
    rows = torch.arange(grid_h, dtype=torch.float32) + 0.5
    cols = torch.arange(grid_w, dtype=torch.float32) + 0.5
    dy = torch.clamp(torch.maximum(y0 - rows, rows - y1), min=0.0)
    dx = torch.clamp(torch.maximum(x0 - cols, cols - x1), min=0.0)
    distance = torch.maximum(dy[:, None], dx[None, :])
    if feather <= 0:
        return (distance == 0).float().flatten()
    return torch.clamp(1.0 - distance / feather, min=0.0).flatten()


def keep_outside(mask: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor, total_steps: int,
                 device: torch.device | str = "cpu") -> AfterStep:
    """The `denoise(after_step=)` hook: z <- m*z + (1-m)*noised(clean, t_next), the input's latents
    at the time the step arrived at (the same seeded noise the run started from); after the last
    step the clean latents themselves, because the schedule ends at T_MAX < 1, where noised(clean)
    still holds a trace of noise. `mask` (N,), `clean` (1 or B, N, C), `noise` (B, N, C); all are
    moved once to `device`, where the denoising loop keeps its latents."""
    m = mask.to(device).view(1, -1, 1)
    clean, noise = clean.to(device), noise.to(device)

    def after_step(step: int, t_next: float, z: torch.Tensor) -> torch.Tensor:
        kept = clean if step == total_steps else noised_start(clean, noise, t_next)
        return m * z + (1.0 - m) * kept

    return after_step


def pixel_mask(mask: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The token mask at pixel resolution, (1, 1, height, width): bilinear, token centres at pixel
    centres, so the ramp is smooth and still exactly 0 beyond the last ramp token's centre."""
    grid_h, grid_w = token_grid(width, height)
    tokens = mask.view(1, 1, grid_h, grid_w)
    return F.interpolate(tokens, size=(height, width), mode="bilinear", align_corners=False)


def paste_outside(decoded: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Decoded pixels inside the region, the input image's own pixels outside, the ramp in between;
    `decoded` (B, 3, H, W) and `original` (1, 3, H, W), both in [-1, 1]."""
    height, width = decoded.shape[-2:]
    m = pixel_mask(mask, width, height).to(decoded.device, torch.float32)
    return m * decoded.float() + (1.0 - m) * original.to(decoded.device, torch.float32)
