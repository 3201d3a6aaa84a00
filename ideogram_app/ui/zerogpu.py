"""Hugging Face ZeroGPU support: `spaces.GPU` when the `spaces` package is installed, a no-op
otherwise, so the same app runs locally, over share links and on Spaces."""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def on_gpu(fn: F, duration: Callable[..., int]) -> F:
    """Ask ZeroGPU for a GPU while `fn` runs, for `duration(*args, **kwargs)` seconds."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
