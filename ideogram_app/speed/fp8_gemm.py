"""FP8 e4m3 GEMMs for the DiT blocks (the `fast` speed mode): `Fp8GemmLinear` and `use_fp8_gemms`.

Both operands of each block GEMM are e4m3 with fp32 scales and the tensor cores multiply fp8 directly
(`torch._scaled_mm` with row-wise scales):

    y[m, n] = s_x[m] · s_w[n] · Σ_k q_x[m, k] · q_w[n, k]  (+ bias[n])

- weights: one scale per output row, `s_w = max|W_row| / 448`, `q_w = e4m3(W / s_w)` — exactly the
  official checkpoint's layout (`ideogram_app/model/fp8.py`), so an fp8-kept layer is used as stored;
- activations: one scale per token, `s_x = max|x_token| / 448`, `q_x = e4m3(clamp(x / s_x, ±448))`,
  computed on every forward from the activation itself (no calibration).

The activation quantisation is written as plain torch ops on purpose: under `torch.compile` (the
per-block compile of `ideogram_app/speed/compiled.py`) the amax reduction, the division and the cast
fuse into the kernel that produces the activation (norm·modulate before `qkv` and `w1`/`w3`, SiLU·mul
before `w2`, the head-concatenating copy of the attention output before `o`). Done as separate eager kernels they cost more than the
fp8 GEMM saves (docs/model-dit.md, "Performance choices"). What stays in bf16, the measured error and
the LoRA behaviour: docs/speed.md, "Fast mode (FP8 GEMMs)".
"""
from __future__ import annotations

import torch
from torch import nn

from ideogram_app.model.fp8 import DEQUANT_WORKSPACE_ELEMENTS, FP8_DTYPE, Fp8Linear

FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Floor of every scale: an all-zero token or weight row gets this instead of 0 (no 0/0); its values
# then quantise to exact zeros. Weight rows use the same floor.
SCALE_FLOOR = 1e-12
# The block linears that become FP8 GEMMs, relative to `layers.<i>`. Everything else keeps its dtype:
# see `use_fp8_gemms`.
GEMM_LINEARS: tuple[str, ...] = ("attention.qkv", "attention.o", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
# cuBLAS/CUTLASS fp8 GEMMs need both dimensions of the weight to be multiples of 16.
GEMM_ALIGNMENT = 16
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantisation along the last dim: `(q, scale)` with scale (…, 1) fp32 and
    `t ≈ q.float() * scale`. scale = max(max|row| / 448, SCALE_FLOOR); q = e4m3(clamp(t / scale, ±448)).

    Plain elementwise ops and one reduction, so `torch.compile` fuses them into the producer of `t`.
    The clamp only guards rounding at the very top of the range (|t / scale| ≤ 448 up to one fp32 ulp):
    float8_e4m3fn has no infinity, torch's own cast saturates at ±448, and the clamp makes the result
    independent of how a compiled kernel's cast treats anything past it.
    """
    scale = (t.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp_min(SCALE_FLOOR)
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows` of a 2-D weight → (fp8 [out, in], fp32 [out]), a block of rows at a time so no
    fp32 copy of the whole matrix ever exists (at most DEQUANT_WORKSPACE_ELEMENTS fp32 values at once)."""
    out_features, in_features = weight.shape
    q = torch.empty(weight.shape, dtype=FP8_DTYPE, device=weight.device)
    scale = torch.empty(out_features, dtype=torch.float32, device=weight.device)
    rows = max(1, DEQUANT_WORKSPACE_ELEMENTS // max(1, in_features))
    for start in range(0, out_features, rows):
        stop = min(start + rows, out_features)
        q[start:stop], row_scale = quantize_rows(weight[start:stop])
        scale[start:stop] = row_scale.squeeze(-1)
    return q, scale


class Fp8GemmLinear(Fp8Linear):
    """A Linear that runs as an FP8 GEMM: stored exactly like `Fp8Linear` (e4m3 weight [out, in], fp32
    per-row `weight_scale` [out], optional bias), but the activation is quantised per token and the
    matmul runs on fp8 operands instead of widening the weight. `dequantize()` (inherited) still gives
    the true weight. Output dtype = the activation's (on CUDA the row-wise fp8 kernels write bf16
    (all GPUs) or fp32 (sm90 with cuBLAS ≥ 12.9); fast mode runs bf16 activations).
    """

    @classmethod
    def from_fp8(cls, layer: Fp8Linear) -> "Fp8GemmLinear":
        """The same tensors (not copies): an fp8-kept layer is used bit for bit as the checkpoint stores it."""
        new = cls(layer.in_features, layer.out_features, bias=False, device="meta")
        # The GEMM reads the weight's transpose as a column-major operand: a loaded weight is contiguous.
        weight = layer.weight if layer.weight.is_contiguous() else layer.weight.contiguous()
        new.weight, new.weight_scale, new.bias = weight, layer.weight_scale, layer.bias
        return new

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "Fp8GemmLinear":
        """Quantise a float `nn.Linear` per output row (the official recipe); the bias is kept as is."""
        new = cls(layer.in_features, layer.out_features, bias=False, device="meta")
        weight, scale = quantize_weight(layer.weight.detach())
        if layer.weight.device.type == "cpu" and layer.weight.is_pinned():  # offloaded models stay pinned
            weight, scale = weight.pin_memory(), scale.pin_memory()
        new.weight, new.weight_scale, new.bias = weight, scale, layer.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_q, x_scale = quantize_rows(x.reshape(-1, self.in_features))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        # The second operand must be column-major: the transpose of the contiguous [out, in] weight is.
        y = torch._scaled_mm(
            x_q, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale[None, :], bias=bias, out_dtype=x.dtype
        )
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8_e4m3 GEMM"


def gemm_linear_names(dit: nn.Module) -> list[str]:
    """The module names `use_fp8_gemms` converts: `layers.<i>.<GEMM_LINEARS>` for every block."""
    return [f"layers.{i}.{suffix}" for i in range(len(dit.layers)) for suffix in GEMM_LINEARS]


def _converter(name: str, layer: nn.Module):
    """How `layer` (the module at `name`, or the base under its LoRAs) becomes an `Fp8GemmLinear`, or
    a ValueError naming the layer. Checked for every layer before any is changed."""
    if isinstance(layer, Fp8GemmLinear):
        return lambda m: m
    if isinstance(layer, Fp8Linear):
        convert = Fp8GemmLinear.from_fp8
    elif isinstance(layer, nn.Linear) and layer.weight.dtype in _FLOAT_DTYPES:
        convert = Fp8GemmLinear.from_linear
    else:
        dtype = getattr(getattr(layer, "weight", None), "dtype", None)
        raise ValueError(
            f"cannot use FP8 GEMMs: {name!r} is {type(layer).__name__} with {dtype} weights (bitsandbytes NF4 or "
            "another quantised kind); fast mode needs the fp8 or bf16 checkpoint"
        )
    if layer.out_features % GEMM_ALIGNMENT or layer.in_features % GEMM_ALIGNMENT:
        raise ValueError(
            f"cannot use FP8 GEMMs: {name!r} maps {layer.in_features} → {layer.out_features}, and FP8 GEMMs need "
            f"both sizes to be multiples of {GEMM_ALIGNMENT}"
        )
    return convert


def use_fp8_gemms(dit: nn.Module) -> nn.Module:
    """Make the block GEMMs of `dit` FP8 GEMMs, in place; returns `dit`.

    Converted: `layers.*.attention.qkv`, `.attention.o`, `.feed_forward.w1/w2/w3` (≈ 86 % of the
    FLOPs of a 1024² forward; attention is nearly all the rest). An `Fp8Linear` (fp8 kept from the
    official checkpoint) is taken as stored, bit for bit; a float `nn.Linear` is quantised per output
    row. Untouched, in whatever form they were loaded:
    `input_proj`, `llm_cond_norm`/`llm_cond_proj`, `t_embedding`, `adaln_proj`, each block's
    `adaln_modulation`, the indicator embedding, the norms and `final_layer` — they feed every token's
    conditioning or the output directly, are small, and are where low precision shows most.

    LoRAs already on the DiT are carried over: unmerged adapters stay as they are, merged ones are
    merged again into the new fp8 weight from the weight kept before merging, so the result equals
    converting first and loading the LoRAs afterwards, and removing them restores the converted base
    bit for bit. Every layer is checked first (NF4 or a size that is not a multiple of 16 is a
    ValueError naming it, with nothing changed); then layers are converted one at a time and each
    replaced layer's old weight is dropped before the next is made, so memory never holds the model
    twice (peak = the model plus one layer's fp8 copy).
    """
    # Imported here, not at the top: lora/layer.py imports this module to merge into Fp8GemmLinear.
    from ideogram_app.lora.layer import LoraLinear

    def base(module: nn.Module) -> nn.Module:
        return module.base if isinstance(module, LoraLinear) else module

    plan = [(name, _converter(name, base(dit.get_submodule(name)))) for name in gemm_linear_names(dit)]
    for name, convert in plan:
        parent_name, _, child = name.rpartition(".")
        parent = dit.get_submodule(parent_name)
        module = getattr(parent, child)
        if isinstance(module, LoraLinear):
            module.replace_base(convert)
        else:
            setattr(parent, child, convert(module))
        del module
    return dit
