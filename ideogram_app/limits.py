"""What one request may cost: the bounds every entry point (Python API, CLI, app, HTTP API, layout
previews) checks before any work, so no caller can be asked for unbounded memory or time.

This module is the one home of the numbers and of their messages; it imports nothing from the
project, so the torch-free caption core, the pipeline and the UI can all use it. A server can
raise a bound (`--max-side`) by building its own `Limits`; the defaults suit one H200-class GPU
serving strangers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class LimitError(ValueError):
    """A request beyond a bound; the message names the value, the bound and what is allowed."""


@dataclass(frozen=True)
class Limits:
    min_side: int = 64  # the VAE and the 2x2 patch need a few latent rows; smaller is never useful
    max_side: int = 2048  # the largest side the model was trained for
    max_pixels: int = 2048 * 2048  # width * height of one image
    max_images: int = 8  # images per request (each is a full batch row in the DiT)
    max_steps: int = 200  # denoising steps per image
    max_caption_chars: int = 100_000  # checked before tokenizing; 2048 tokens never need more
    max_upload_bytes: int = 20 * 1024 * 1024  # one uploaded file (image, caption, LoRA preview)
    max_image_pixels: int = 40_000_000  # decoded size of an uploaded image, checked before decoding

    def __post_init__(self) -> None:
        for name in ("min_side", "max_side", "max_pixels", "max_images", "max_steps", "max_caption_chars",
                     "max_upload_bytes", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name} must be a positive integer, got {value!r}")
        if self.min_side > self.max_side:
            raise ValueError(f"limit min_side {self.min_side} is above max_side {self.max_side}")

    def check_size(self, width: int, height: int) -> None:
        """Both sides in range and the area within `max_pixels` (whole numbers already checked)."""
        problems = []
        for name, value in (("width", width), ("height", height)):
            if not self.min_side <= value <= self.max_side:
                problems.append(f"{name} {value} is outside the allowed {self.min_side}-{self.max_side} pixels")
        if not problems and width * height > self.max_pixels:
            problems.append(
                f"{width}x{height} is {width * height:,} pixels; at most {self.max_pixels:,} "
                f"(e.g. {math.isqrt(self.max_pixels)}x{math.isqrt(self.max_pixels)}) are allowed"
            )
        if problems:
            raise LimitError("; ".join(problems))

    def check_images(self, count: int) -> None:
        if not 1 <= count <= self.max_images:
            raise LimitError(f"num_images is {count}; choose 1 to {self.max_images}")

    def check_steps(self, steps: int) -> None:
        if not 1 <= steps <= self.max_steps:
            raise LimitError(f"{steps} denoising steps asked for; choose 1 to {self.max_steps}")

    def check_caption_chars(self, text: str) -> None:
        if len(text) > self.max_caption_chars:
            raise LimitError(
                f"the caption is {len(text):,} characters long; at most {self.max_caption_chars:,} are accepted "
                "(the model reads at most 2048 tokens)"
            )

    def check_upload_bytes(self, what: str, size: int) -> None:
        if size > self.max_upload_bytes:
            raise LimitError(
                f"{what} is {size / 2**20:.1f} MiB; uploads are limited to {self.max_upload_bytes / 2**20:.0f} MiB"
            )

    def check_image_pixels(self, what: str, width: int, height: int) -> None:
        if width * height > self.max_image_pixels:
            raise LimitError(
                f"{what} is {width}x{height} ({width * height / 1e6:.0f} MP); images up to "
                f"{self.max_image_pixels / 1e6:.0f} MP are accepted"
            )


DEFAULT_LIMITS = Limits()
