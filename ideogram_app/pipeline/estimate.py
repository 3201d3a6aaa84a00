"""How much memory a model needs: weight bytes read from safetensors headers (no data read), the
published repos' sizes for ids not downloaded yet, the activation peaks of one generation, and the
estimate per memory mode that the app shows before loading. Also the automatic fp8 choice, which is
a question of room on the device. Placement itself lives in placement.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ideogram_app.loading.safetensors_io import read_headers, resolve_safetensors
from ideogram_app.pipeline.layer_streaming import DEFAULT_PREFETCH, DEFAULT_RESIDENT_BYTES
from ideogram_app.pipeline.model_config import WEIGHT_ROLES
from ideogram_app.pipeline.placement import MemoryPlan, check_memory_mode
from ideogram_app.pipeline.sizes import token_grid

# Runtime weight bytes of the published repos (docs/pipeline.md, "Memory modes"), for ids not downloaded yet.
_GB = 10**9
KNOWN_WEIGHTS: dict[str, dict[str, int]] = {
    "fp8": {"transformer": int(9.28 * _GB), "unconditional_transformer": int(9.28 * _GB),
            "text_encoder": int(7.57 * _GB), "vae": int(0.17 * _GB)},
    "bf16": {"transformer": int(18.56 * _GB), "unconditional_transformer": int(18.56 * _GB),
             "text_encoder": int(15.14 * _GB), "vae": int(0.17 * _GB)},
    "nf4": {"transformer": int(5.5 * _GB), "unconditional_transformer": int(5.5 * _GB),
            "text_encoder": int(4.0 * _GB), "vae": int(0.17 * _GB)},
}

# Real-model widths used by the activation estimate (docs/model-dit.md and docs/model-vae-text.md).
_EMB, _FFN, _TEXT_FEATURES, _VAE_TOP_CHANNELS = 4608, 12288, 53248, 128
# Streamed blocks as shares of a component's parameters (docs/model-dit.md, "Parameter count and FLOPs";
# docs/model-vae-text.md, "The Qwen3-VL text model and its files"): (blocks, parameters per block, total).
_STREAMED_BLOCKS = {
    "transformer": (34, 264_278_528, 9_279_288_448),
    "unconditional_transformer": (34, 264_278_528, 9_279_288_448),
    "text_encoder": (36, 192_946_432, 7_568_405_504),
}
# While an fp8 (or NF4) block Linear runs, its weight exists widened: the widest (12288 x 4608) as two
# fp32 copies (widened, then scaled) before the bf16 result.
_WIDENED_LINEAR = _FFN * _EMB * 4 * 2


def component_weight_bytes(path: str | Path, role: str, fp8: str = "keep", dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes one component will occupy once loaded, from its safetensors headers (no data read).

    fp8 tensors count one byte when kept, `dtype`'s size when dequantised (their scales then vanish);
    packed 4-bit data counts as stored; other floats are cast to `dtype`. The text encoder's vision
    tower is never loaded and is not counted.
    """
    width = torch.tensor([], dtype=dtype).element_size()
    total = 0
    for name, info in read_headers(resolve_safetensors(path)).items():
        if role == "text_encoder" and name.startswith("visual."):
            continue
        numel = math.prod(info.shape)
        if info.dtype == torch.float8_e4m3fn:
            total += numel * (1 if fp8 == "keep" else width)
        elif name.endswith(".weight_scale"):
            total += 0 if fp8 == "dequantize" else info.nbytes
        elif info.dtype.is_floating_point:
            total += numel * width
        else:
            total += info.nbytes
    return total


def weight_bytes_from_files(repo: str | Path, fp8: str = "keep", dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """`component_weight_bytes` of every component found in a repo folder."""
    return {
        role: component_weight_bytes(Path(repo) / role, role, fp8, dtype)
        for role in WEIGHT_ROLES
        if (Path(repo) / role).is_dir()
    }


def choose_fp8(plan: MemoryPlan, dequantized_bytes: int, speed_mode: str = "eager", headroom: int = 4 * _GB) -> str:
    """What `fp8="auto"` becomes. "keep" in the fast speed mode, whose FP8 GEMMs take the checkpoint's
    own e4m3 weights and row scales; otherwise 'dequantize' (faster steps) when every weight fits
    widened on the device with room to spare, which only a `full` plan on CUDA can tell, and 'keep'
    (half the memory) elsewhere."""
    if speed_mode == "fast" or plan.mode != "full" or plan.device.type != "cuda":
        return "keep"
    free, _ = torch.cuda.mem_get_info(plan.device)
    return "dequantize" if dequantized_bytes + headroom <= free else "keep"


def activation_bytes(height: int, width: int, num_images: int = 1, text_tokens: int = 1024, bytes_per: int = 2) -> dict[str, int]:
    """Rough activation peaks per phase for the real model (residual stream, SwiGLU, VAE feature maps)."""
    tokens = text_tokens + math.prod(token_grid(width, height))
    return {
        "text_encoder": text_tokens * _TEXT_FEATURES * 4,
        "dit": num_images * tokens * (8 * _EMB + 3 * _FFN) * bytes_per,
        "vae": num_images * height * width * _VAE_TOP_CHANNELS * bytes_per * 4,
    }


@dataclass(frozen=True)
class MemoryEstimate:
    device_bytes: int  # peak on the accelerator
    host_bytes: int  # CPU RAM held by weights (and activations in cpu mode)

    def describe(self) -> str:
        def gb(n: int) -> str:
            return f"{n / _GB:.1f} GB"

        if self.device_bytes == 0:
            return f"CPU only: about {gb(self.host_bytes)} of RAM"
        return f"about {gb(self.device_bytes)} of GPU memory and {gb(self.host_bytes)} of RAM"


def estimate_memory(
    weights: dict[str, int],
    mode: str,
    height: int = 1024,
    width: int = 1024,
    num_images: int = 1,
    text_tokens: int = 1024,
) -> MemoryEstimate:
    """Peak memory of one generation under `mode`, from per-component weight bytes."""
    check_memory_mode(mode)
    act = activation_bytes(height, width, num_images, text_tokens)
    dits = [weights.get(name, 0) for name in ("transformer", "unconditional_transformer")]
    phases = {
        "text_encoder": weights.get("text_encoder", 0) + act["text_encoder"],
        "dit": max(dits) + act["dit"],
        "vae": weights.get("vae", 0) + act["vae"],
    }
    total = sum(weights.values())
    if mode == "full":
        return MemoryEstimate(total + max(act.values()), 0)
    if mode == "offload":
        return MemoryEstimate(max(phases.values()), total)
    if mode == "stream":
        return MemoryEstimate(_stream_device_bytes(weights, act), total)
    return MemoryEstimate(0, total + max(act.values()))  # cpu


def _stream_device_bytes(weights: dict[str, int], act: dict[str, int]) -> int:
    """`stream` (pipeline/layer_streaming.py) with its default budget: the resident parts (each
    component's rest, then its first blocks, in the pipeline's placement order while they fit the
    budget) stay on the device; on top, the phase that needs most: the running component's rest
    unless resident, `prefetch + 1` of its blocks (the running one and those copied ahead), its
    activations and, for the DiTs, one widened Linear."""
    left = DEFAULT_RESIDENT_BYTES
    visiting: dict[str, int] = {}
    for role in ("transformer", "unconditional_transformer", "text_encoder", "vae"):
        size = weights.get(role, 0)
        count, block_params, params = _STREAMED_BLOCKS.get(role, (0, 0, 1))
        block = size * block_params // params
        rest = size - count * block
        visiting[role] = 0
        if rest <= left:
            left -= rest
        else:
            visiting[role] += rest
        resident = min(count, left // block) if block else 0
        left -= resident * block
        if resident < count:
            visiting[role] += (DEFAULT_PREFETCH + 1) * block
    phases = {
        "text_encoder": visiting["text_encoder"] + act["text_encoder"],
        "dit": max(visiting["transformer"], visiting["unconditional_transformer"]) + act["dit"] + _WIDENED_LINEAR,
        "vae": visiting["vae"] + act["vae"],
    }
    return DEFAULT_RESIDENT_BYTES - left + max(phases.values())
