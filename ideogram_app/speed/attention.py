"""Which SDPA kernel the compiled blocks use: the fastest one that takes the inputs, tried in order.

The DiT runs attention without a mask whenever every row is one segment (docs/model-dit.md,
"Performance choices"), and mask-free is where the kernels differ most: at head dim 256 on an H100
the cuDNN kernel reached 660–726 TFLOP/s, PyTorch's FlashAttention-2 kernel 288–295 and the
memory-efficient kernel about 150. PyTorch's own default order puts flash first, so exact mode asks
for cuDNN → flash → memory-efficient → math explicitly. The list keeps every back-end, so an input
one kernel refuses (the boolean block mask of a left-padded batch, an unsupported dtype) falls through
to the next instead of failing, and math is always there as the last resort.

Only CUDA has a choice to make; on other devices nothing is changed. The eager reference (speed mode
"eager") never enters this context.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

MASK_FREE_PRIORITY: tuple[SDPBackend, ...] = (
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)


def fastest_attention(device: torch.device) -> AbstractContextManager:
    """The SDPA back-end priority of exact mode for a forward on `device` (a no-op off CUDA).

    Used inside the compiled block: dynamo records the choice while tracing, so it costs nothing per
    call (entering `sdpa_kernel` eagerly costs about 0.1 ms, too much for 3,000 block calls an image).
    """
    if device.type != "cuda":
        return nullcontext()
    return sdpa_kernel(list(MASK_FREE_PRIORITY), set_priority=True)
