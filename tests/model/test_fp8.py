"""Fp8Linear and dequantize_fp8, checked against the defining formula on real float8 tensors."""
import pytest
import torch

from ideogram_app.model.fp8 import Fp8Linear, dequantize_fp8


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(dim=1).float() / 448.0
    return (w / scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def test_dequantize_equals_formula_exactly():
    torch.manual_seed(0)
    w8, scale = quantize_rows(torch.randn(37, 53))
    ref = w8.float() * scale[:, None]
    assert torch.equal(dequantize_fp8(w8, scale, torch.float32), ref)
    assert torch.equal(dequantize_fp8(w8, scale, torch.bfloat16), ref.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_is_exact_over_every_fp8_value(dtype):
    every_code = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    finite = every_code[~every_code.float().isnan()]
    w8 = finite.repeat(3, 1)
    scale = torch.tensor([1.0, 3.1e-3, 0.37])
    assert torch.equal(dequantize_fp8(w8, scale, dtype), (w8.float() * scale[:, None]).to(dtype))


def test_dequantize_through_a_small_workspace_matches_whole():
    torch.manual_seed(1)
    w8, scale = quantize_rows(torch.randn(50, 16))
    workspace = torch.empty(16 * 7)  # 7 rows per chunk, ragged last chunk
    assert torch.equal(dequantize_fp8(w8, scale, torch.bfloat16, workspace), (w8.float() * scale[:, None]).to(torch.bfloat16))
    narrow = torch.empty(5)  # narrower than one row: falls back to a one-row buffer
    assert torch.equal(dequantize_fp8(w8, scale, torch.float32, narrow), w8.float() * scale[:, None])


def test_dequantize_rejects_2d_scale():
    w8, scale = quantize_rows(torch.randn(4, 8))
    with pytest.raises(ValueError, match="1-D scale of 4 rows"):
        dequantize_fp8(w8, scale[:, None], torch.float32)


def test_fp8_linear_forward_matches_dense_linear():
    torch.manual_seed(2)
    w8, scale = quantize_rows(torch.randn(12, 20))
    layer = Fp8Linear(20, 12, bias=True, dtype=torch.float32)
    layer.weight.copy_(w8)
    layer.weight_scale.copy_(scale)
    layer.bias.data.normal_()
    x = torch.randn(3, 5, 20)
    expected = x @ (w8.float() * scale[:, None]).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert layer.weight.dtype == torch.float8_e4m3fn
