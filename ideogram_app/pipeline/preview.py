"""Live previews: latent tokens -> a small RGB image, without running the VAE decoder.

A full VAE decode costs as much as several denoising steps (tens of seconds on a CPU), so a preview
every few steps must not use it. Each latent token stands for one 16 x 16 pixel patch, and its 128
channels carry that patch's colour close to linearly, so one affine map 128 -> 3 per token gives a
recognisable thumbnail (one pixel per patch) for the price of a matrix product.

The map is fitted from the loaded VAE itself, not taken from published numbers: no such factors
exist for this VAE in this repository, and a map fitted from the VAE that will decode the image
stays right for any checkpoint (a fine-tuned VAE, the tiny test VAE). The fit encodes a few small
synthetic images (flat colours and smooth gradients, `FIT_SIDE` pixels square) with the VAE's
encoder, and solves least squares (on centred data, so the bias is exact) from each normalised token to the mean colour of
its patch. It runs once per VAE (a few 64 x 64 encodes: milliseconds on a GPU, well under a
second on a CPU for the real VAE) and is cached for as long as that VAE object lives.

During sampling the latent z(t) is noise and image mixed (z = t * data + (1 - t) * noise), so
projecting z itself shows mostly noise early on. `PreviewHook` projects the data estimate instead:
the Euler step from the previous latent gives the velocity v = (z_next - z) / (t_next - t), and the
flow's data prediction is z_next + (1 - t_next) * v, which is sharp from the first steps on.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torch import nn

from ideogram_app.pipeline.conditioning import encode_image
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.pipeline.sampling import AfterStep

FIT_SIDE = 64  # pixels per side of a fitting image: a 4 x 4 token grid, enough to include inner patches
PATCH = 16  # pixels per token side (x8 VAE, 2 x 2 patch)
RCOND = 1e-6  # directions of the tokens this much weaker than the strongest are left out of the solve
PREVIEW_LONG_SIDE = 512  # previews are scaled up to about this many pixels on their long side
Preview = Callable[[int, int, Image.Image], None]


@dataclass(frozen=True)
class LatentProjection:
    """token (128,) -> RGB in [-1, 1]: `tokens @ weight + bias` (weight (128, 3), bias (3,), fp32)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, 128) normalised tokens -> (B, N, 3) colours in [-1, 1] (clamped)."""
        weight, bias = self.weight.to(tokens.device), self.bias.to(tokens.device)
        return (tokens.float() @ weight + bias).clamp(-1.0, 1.0)


_fitted: "weakref.WeakKeyDictionary[nn.Module, LatentProjection]" = weakref.WeakKeyDictionary()


def fitting_images(side: int = FIT_SIDE) -> torch.Tensor:
    """(N, 3, side, side) images in [-1, 1]: the eight corners of the colour cube and five greys as
    flat images, then horizontal, vertical and diagonal gradients between pairs of colours, so the fit
    sees flat patches and patches with an edge-free slope, in every channel combination."""
    corners = [(r, g, b) for r in (-1.0, 1.0) for g in (-1.0, 1.0) for b in (-1.0, 1.0)]
    greys = [(v, v, v) for v in (-0.6, -0.3, 0.0, 0.3, 0.6)]
    flats = [torch.tensor(c).view(3, 1, 1).expand(3, side, side) for c in corners + greys]
    ramp = torch.linspace(0.0, 1.0, side)
    shapes = [ramp.view(1, 1, side).expand(1, side, side),  # left -> right
              ramp.view(1, side, 1).expand(1, side, side),  # top -> bottom
              (ramp.view(1, side, 1) + ramp.view(1, 1, side)) / 2]  # diagonal
    pairs = [((-1.0, -1.0, 1.0), (1.0, 1.0, -1.0)), ((1.0, -1.0, -1.0), (-1.0, 1.0, 1.0)),
             ((-1.0, 1.0, -1.0), (1.0, -1.0, 1.0)), ((-0.8, -0.8, -0.8), (0.8, 0.8, 0.8)),
             ((0.5, -0.5, 0.0), (-0.5, 0.0, 0.5))]
    gradients = [torch.tensor(a).view(3, 1, 1) * (1 - s) + torch.tensor(b).view(3, 1, 1) * s
                 for a, b in pairs for s in shapes]
    return torch.stack([*flats, *gradients]).float()


def patch_means(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, H/16 * W/16, 3): each token's patch colour, in the tokens' row-major order."""
    pooled = torch.nn.functional.avg_pool2d(images, PATCH)  # (N, 3, H/16, W/16)
    return pooled.flatten(2).transpose(1, 2)


def fit_projection(vae: nn.Module, memory: MemoryPlan | None = None) -> LatentProjection:
    """Least-squares affine map from `vae`'s normalised latent tokens to patch colours (see the module
    docstring), solved in float64; directions the images do not excite (rank-deficient
    for a VAE whose tokens barely vary) are dropped by the SVD solve instead of blowing up."""
    memory = memory or MemoryPlan.create("cpu")
    images = fitting_images()
    with torch.inference_mode():
        tokens = encode_image(vae, images, memory).double().cpu()  # (N, 16, 128)
    x = tokens.reshape(-1, tokens.shape[-1])
    y = patch_means(images).double().reshape(-1, 3)
    x_mean, y_mean = x.mean(0), y.mean(0)
    weight = torch.linalg.lstsq(x - x_mean, y - y_mean, rcond=RCOND, driver="gelsd").solution  # (128, 3)
    bias = y_mean - x_mean @ weight
    return LatentProjection(weight.float().contiguous(), bias.float().contiguous())


def projection_for(vae: nn.Module, memory: MemoryPlan | None = None) -> LatentProjection:
    """The fitted projection of this VAE object, fitted on first use and then cached with it."""
    found = _fitted.get(vae)
    if found is None:
        found = _fitted[vae] = fit_projection(vae, memory)
    return found


def tokens_to_image(projection: LatentProjection, tokens: torch.Tensor, grid_h: int, grid_w: int,
                    long_side: int = PREVIEW_LONG_SIDE) -> Image.Image:
    """(B, N, 128) tokens -> one RGB image: the batch side by side, each token one pixel, scaled up
    (bilinear) so that the long side of one image is about `long_side`."""
    rgb = projection(tokens).view(tokens.shape[0], grid_h, grid_w, 3)
    row = torch.cat(list(rgb), dim=1)  # (grid_h, B * grid_w, 3)
    pixels = ((row + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    image = Image.fromarray(pixels, "RGB")
    scale = max(1, round(long_side / max(grid_h, grid_w)))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)


class PreviewHook:
    """`denoise`'s `after_step`: every `every` steps (and at the last one), the data estimate of the
    current step as an image, handed to `preview(step, total, image)`. `then` is another `after_step`
    (a region edit's) that runs first, so the preview shows the latents the next step starts from;
    the hook returns them unchanged."""

    def __init__(self, projection: LatentProjection, z0: torch.Tensor, times: list[float], grid_h: int,
                 grid_w: int, preview: Preview, every: int = 1, then: AfterStep | None = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"preview_every must be a positive whole number of steps, got {every!r}")
        self.projection, self.times, self.grid = projection, times, (grid_h, grid_w)
        self.preview, self.every, self.then = preview, every, then
        self.previous = z0
        self.total = len(times) - 1

    def __call__(self, step: int, t_next: float, z: torch.Tensor) -> torch.Tensor:
        if self.then is not None:
            z = self.then(step, t_next, z)
        previous, self.previous = self.previous.to(z.device), z
        if step % self.every and step != self.total:
            return z
        velocity = (z - previous) / (t_next - self.times[step - 1])
        estimate = z + (1.0 - t_next) * velocity
        self.preview(step, self.total, tokens_to_image(self.projection, estimate, *self.grid))
        return z
