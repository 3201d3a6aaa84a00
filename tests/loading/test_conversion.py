"""The fp8 conversion seam: kept fp8 shells, the per-tensor conversion the loaders use, and the pass
over a loaded module — which must give bit for bit what a dequantising load gives."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ideogram_app.loading.checkpoint_layout import fp8_linear_names
from ideogram_app.loading.conversion import FP8_MODES, check_fp8_mode, convert_fp8_linears, prepare_fp8_linears
from ideogram_app.loading.dit import load_transformer
from ideogram_app.loading.safetensors_io import iter_tensors, read_header
from ideogram_app.loading.streaming import assign_state_dict
from ideogram_app.loading.text_encoder import load_text_encoder
from ideogram_app.model.fp8 import Fp8Linear
from tests.fixtures.tiny_dit import DIT_FILE, quantize_fp8_rows, to_split_keys, write_tiny_dit
from tests.fixtures.tiny_text_encoder import write_tiny_text_encoder, write_tiny_tokenizer


def test_swap_then_stream_a_real_fp8_file(tmp_path):
    torch.manual_seed(3)
    w8, scale = quantize_fp8_rows(torch.randn(6, 4))
    path = tmp_path / "m.safetensors"
    save_file({"0.weight": w8, "0.weight_scale": scale, "0.bias": torch.randn(6), "1.weight": torch.randn(2, 6)}, path)
    header = read_header(path)
    assert fp8_linear_names(header) == {"0"}
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2, bias=False))
    prepare_fp8_linears(model, fp8_linear_names(header), "keep")
    assign_state_dict(model, dict(iter_tensors(header)))
    assert isinstance(model[0], Fp8Linear) and isinstance(model[1], nn.Linear)
    x = torch.randn(2, 4)
    expected = (x @ (w8.float() * scale[:, None]).T + model[0].bias) @ model[1].weight.T
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("fp8", ["keep", "dequantize"])
def test_swap_refuses_a_non_linear(fp8):
    model = nn.Sequential(nn.LayerNorm(4))
    with pytest.raises(ValueError, match="'0' is an fp8 layer .* LayerNorm"):
        prepare_fp8_linears(model, {"0"}, fp8)


def test_modes():
    assert FP8_MODES == ("auto", "keep", "dequantize")
    assert check_fp8_mode("keep") == "keep"
    with pytest.raises(ValueError, match="fp8 must be 'dequantize' or 'keep', got 'auto'"):
        check_fp8_mode("auto")  # "auto" is the pipeline's to resolve, never a loader's


def assert_same_modules_and_tensors(a: nn.Module, b: nn.Module) -> None:
    assert [(n, type(m)) for n, m in a.named_modules()] == [(n, type(m)) for n, m in b.named_modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    assert not any(p.requires_grad for p in a.parameters())


@pytest.mark.parametrize("layout", ["fp8", "fp8-split"])
def test_dit_kept_then_converted_equals_dequantised_at_load(tmp_path, layout):
    write_tiny_dit(tmp_path, "fp8", seed=2)
    if layout == "fp8-split":  # the same weights under diffusers' split names: per-part scales
        file = tmp_path / "transformer" / DIT_FILE
        save_file(to_split_keys(load_file(file)), file)
    for dtype in (torch.bfloat16, torch.float32):
        kept = load_transformer(tmp_path, dtype=dtype, fp8="keep")
        assert isinstance(kept.layers[0].attention.qkv, Fp8Linear)
        assert convert_fp8_linears(kept, "keep", dtype) is kept and isinstance(kept.layers[0].attention.qkv, Fp8Linear)
        assert_same_modules_and_tensors(convert_fp8_linears(kept, "dequantize", dtype), load_transformer(tmp_path, dtype=dtype))


def test_text_encoder_kept_then_converted_equals_dequantised_at_load(tmp_path):
    write_tiny_text_encoder(tmp_path, layout="fp8", seed=4)
    write_tiny_tokenizer(tmp_path)
    kept = load_text_encoder(tmp_path, fp8="keep").language_model
    assert_same_modules_and_tensors(
        convert_fp8_linears(kept, "dequantize", torch.bfloat16), load_text_encoder(tmp_path, fp8="dequantize").language_model
    )
