"""NF4 (bitsandbytes) checkpoints: a real bnb serialisation round-trips through load_transformer.

Needs CUDA and bitsandbytes; marked `gpu` and skipped elsewhere. The CPU refusal is tested in
test_dit.py. Run on the GPU machine:  python -m pytest tests/loading/test_nf4.py -m gpu -q
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ideogram_app.loading.dit import load_transformer
from ideogram_app.model.token_layout import build_token_layout
from tests.fixtures.tiny_dit import DIT_FILE, linear_names, tiny_dit_state_dict, write_tiny_dit

LLM_DIM = 448

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="NF4 needs a CUDA device"),
]


def _stats(raw, name):
    prefix = name + ".weight."
    return {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}


def _split_nf4(raw: dict) -> dict:
    """diffusers naming for an NF4 file: q/k/v are exact row slices of the packed data and absmax."""
    out = {}
    for key, value in raw.items():
        if ".attention.qkv.weight" in key:
            base = key.replace(".qkv.", ".{}.")
            for part_index, part in enumerate(("to_q", "to_k", "to_v")):
                if key.endswith(".quant_map"):
                    piece = value.clone()
                elif key.endswith(".quant_state.bitsandbytes__nf4"):
                    meta = json.loads(bytes(value.tolist()).decode())
                    meta["shape"] = [meta["shape"][0] // 3, meta["shape"][1]]
                    piece = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
                else:
                    piece = value.chunk(3)[part_index].contiguous()
                out[base.format(part)] = piece
        else:
            out[key.replace(".attention.o.", ".attention.to_out.0.")] = value
    return out


def check_nf4_roundtrip(tmp_path, device: str) -> None:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    # llm_features_dim 448 and adaln_dim 64: like every real in-dim (128, 512, 4608, 12288, 53248), a
    # multiple of the 64-block, as bitsandbytes' kernels assume
    file = write_tiny_dit(tmp_path / "nf4", "nf4", seed=11, nf4_device=device, llm_features_dim=LLM_DIM, adaln_dim=64)
    raw = load_file(file)
    assert raw["layers.0.attention.qkv.weight"].dtype == torch.uint8
    model = load_transformer(tmp_path / "nf4", device=device, dtype=torch.bfloat16)

    dense_state = {}
    names = linear_names(tiny_dit_state_dict(seed=11, llm_features_dim=LLM_DIM, adaln_dim=64))
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, bnb.nn.Linear4bit)
        stored = bnbf.QuantState.from_dict(_stats(raw, name), device=torch.device(device))
        want = bnbf.dequantize_4bit(raw[name + ".weight"].to(device), stored)
        got = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        assert torch.equal(got, want), name
        dense_state[name + ".weight"] = want.cpu()
    for key, value in raw.items():
        if not any(key.startswith(n + ".weight") for n in names):
            dense_state[key] = value
    (tmp_path / "dense").mkdir()
    save_file(dense_state, tmp_path / "dense" / DIT_FILE)
    (tmp_path / "dense/config.json").write_text((file.parent / "config.json").read_text())
    dense = load_transformer(tmp_path / "dense", device=device, dtype=torch.bfloat16)

    # the same weights under diffusers' split names (exact row slices) load identically
    (tmp_path / "split").mkdir()
    save_file(_split_nf4(raw), tmp_path / "split" / DIT_FILE)
    (tmp_path / "split/config.json").write_text((file.parent / "config.json").read_text())
    split = load_transformer(tmp_path / "split", device=device, dtype=torch.bfloat16)
    for name in names:
        a, b = model.get_submodule(name).weight, split.get_submodule(name).weight
        assert torch.equal(bnbf.dequantize_4bit(a.data, a.quant_state), bnbf.dequantize_4bit(b.data, b.quant_state)), name

    pos, seg, ind = (v.to(device) for v in build_token_layout([5, 2], 3, 4, batch=2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, pos.shape[1], 128, generator=g).to(device)
    llm = torch.randn(2, pos.shape[1], LLM_DIM, generator=g).to(device)
    t = torch.tensor([0.3, 0.8], device=device)
    with torch.no_grad():
        out, ref = model(x, t, llm, pos, seg, ind), dense(x, t, llm, pos, seg, ind)
    image = ind == 2
    assert ((out - ref)[image].abs().max() / ref[image].abs().max()) < 2e-2


def test_nf4_checkpoint_round_trips_on_cuda(tmp_path):
    pytest.importorskip("bitsandbytes")
    check_nf4_roundtrip(tmp_path, "cuda")
