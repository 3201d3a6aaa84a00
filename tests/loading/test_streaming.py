"""The one streaming loop and the strict assign, against safetensors' own `load_file` and the fp8 formula."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ideogram_app.loading.safetensors_io import read_header
from ideogram_app.loading.streaming import Target, assign_state_dict, stream_state_dict
from tests.fixtures.tiny_dit import quantize_fp8_rows


@pytest.fixture()
def stored(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"norm.weight": torch.randn(6, generator=g), "steps": torch.arange(4, dtype=torch.int64),
               "code_book": torch.randn(16, generator=g)}
    for part in ("to_q", "to_k", "to_v"):
        tensors[f"{part}.weight"] = torch.randn(2, 5, generator=g).to(torch.bfloat16)
    tensors["o.weight"], tensors["o.weight_scale"] = quantize_fp8_rows(torch.randn(4, 3, generator=g))
    file = tmp_path / "m.safetensors"
    save_file(tensors, file)
    return file


def targets_for(header):
    parts = {"to_q": 0, "to_k": 1, "to_v": 2}
    out = {}
    for key in header:
        head = key.split(".")[0]
        out[key] = Target("qkv.weight", parts[head]) if head in parts else Target(key, as_stored=key == "code_book")
    return out


def test_dequantize_casts_fuses_and_widens_fp8(stored):
    header, raw = read_header(stored), load_file(stored)
    state = stream_state_dict(header, targets_for(header), torch.device("cpu"), torch.float32, "dequantize")
    assert set(state) == {"norm.weight", "steps", "code_book", "qkv.weight", "o.weight"}  # the scale was consumed
    assert torch.equal(state["qkv.weight"], torch.cat([raw["to_q.weight"], raw["to_k.weight"], raw["to_v.weight"]]).float())
    assert torch.equal(state["o.weight"], raw["o.weight"].float() * raw["o.weight_scale"][:, None])
    assert torch.equal(state["norm.weight"], raw["norm.weight"]) and torch.equal(state["steps"], raw["steps"])


def test_keep_leaves_fp8_and_its_scale_and_as_stored_tensors_untouched(stored):
    header, raw = read_header(stored), load_file(stored)
    state = stream_state_dict(header, targets_for(header), torch.device("cpu"), torch.bfloat16, "keep")
    assert state["o.weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(state["o.weight"].view(torch.uint8), raw["o.weight"].view(torch.uint8))
    assert state["o.weight_scale"].dtype == torch.float32 and torch.equal(state["o.weight_scale"], raw["o.weight_scale"])
    assert state["norm.weight"].dtype == torch.bfloat16 and state["steps"].dtype == torch.int64
    assert state["code_book"].dtype == torch.float32 and torch.equal(state["code_book"], raw["code_book"])


def test_assign_into_meta_module_and_precise_mismatch_errors():
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    state = {"weight": torch.randn(2, 3, dtype=torch.bfloat16), "bias": torch.randn(2, dtype=torch.bfloat16)}
    assign_state_dict(model, state)
    assert model.weight.data_ptr() == state["weight"].data_ptr()  # no copy made
    assert model.weight.dtype == torch.bfloat16 and model.weight.device.type == "cpu"

    with torch.device("meta"):
        model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"missing keys \['bias'\].*unexpected keys \['extra'\]"):
        assign_state_dict(model, {"weight": state["weight"], "extra": state["bias"]}, where="f.safetensors")
    with pytest.raises(ValueError, match=r"'weight' has shape \(3, 2\), model expects \(2, 3\)"):
        assign_state_dict(model, {"weight": state["weight"].T.contiguous(), "bias": state["bias"]})
