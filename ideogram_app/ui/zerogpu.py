"""Hugging Face ZeroGPU support: `spaces.GPU` when the `spaces` package is installed, a no-op
otherwise, so the same app runs locally, over share links and on Spaces; and how long a request asks
ZeroGPU to hold a GPU.

Why the duration is computed: ZeroGPU kills a call that runs past the duration it asked for, and a
longer duration costs the visitor queue priority and daily quota. So each request asks for what its
size, steps and image count need, with a margin, within fixed bounds (docs/app.md, "Hugging Face
Spaces", gives the numbers).
"""
from __future__ import annotations

import math
import os
from typing import Callable, TypeVar

from ideogram_app.pipeline.settings import GenerationSettings
from ideogram_app.pipeline.sizes import token_grid

F = TypeVar("F", bound=Callable)

# Floating-point work of one Ideogram 4 DiT forward over L tokens (image + text), counted from the
# released shapes (docs/app.md, "Hugging Face Spaces"): a linear part (the 9 B parameters' matmuls) and
# the attention's quadratic part.
FLOPS_PER_TOKEN = 1.733e10
FLOPS_PER_TOKEN_PAIR = 6.27e5
FORWARDS_PER_STEP = 2  # the conditional and the unconditional transformer (guidance)
# Sustained bf16 FLOP/s assumed for ZeroGPU's default size, half an RTX Pro 6000 Blackwell, running the
# eager model (ZeroGPU allows no torch.compile at run time). Deliberately low: one H100 sustains about
# 5.2e14 on this model (0.34 s per guided 1024² step), and half a Blackwell workstation card is taken
# as five times slower, so the estimate errs towards asking for too much, never too little.
ASSUMED_FLOPS_PER_S = 1.0e14
TEXT_TOKENS = 1024  # a long caption; the exact count is not known before the tokenizer runs
# Fixed costs of a call: attaching the GPU and moving the weights onto it, the text encoder, and the VAE
# decode per image (per megapixel; ~1 s at 1 MP on an H100, given a 5x margin as above).
ATTACH_S = 20.0
DECODE_S_PER_MEGAPIXEL = 5.0
MIN_DURATION_S = 30  # a call shorter than this gains no priority and risks the attach time
MAX_DURATION_S = 300  # the longest hold the app ever asks for; bigger requests are capped at it


def step_seconds(width: int, height: int, text_tokens: int = TEXT_TOKENS) -> float:
    """Estimated seconds of one guided denoising step for one image of `width` × `height`."""
    rows, columns = token_grid(width, height)
    tokens = rows * columns + text_tokens
    flops = FORWARDS_PER_STEP * (FLOPS_PER_TOKEN * tokens + FLOPS_PER_TOKEN_PAIR * tokens**2)
    return flops / ASSUMED_FLOPS_PER_S


def gpu_duration(settings: GenerationSettings, text_tokens: int = TEXT_TOKENS) -> int:
    """Seconds to ask ZeroGPU for, for one run of `settings`: steps × step time × images, plus the
    attach, encode and decode costs, rounded up and kept within MIN_DURATION_S..MAX_DURATION_S."""
    megapixels = settings.width * settings.height / 1024**2
    per_image = settings.sampler.steps * step_seconds(settings.width, settings.height, text_tokens)
    total = ATTACH_S + settings.num_images * (per_image + DECODE_S_PER_MEGAPIXEL * megapixels)
    return int(min(MAX_DURATION_S, max(MIN_DURATION_S, math.ceil(total))))


def on_zerogpu() -> bool:
    """Whether this process runs on a ZeroGPU Space (which sets SPACES_ZERO_GPU=true). There the GPU exists
    only inside `spaces.GPU` calls and torch.compile may not run, so only the eager speed mode is offered."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")


def on_gpu(fn: F, duration: Callable[..., int]) -> F:
    """Ask ZeroGPU for a GPU while `fn` runs, for `duration(*args, **kwargs)` seconds."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
