"""load_transformer on real safetensors files in every layout: paths, config sources (both naming
schemes, shape inference), fp8 modes, split→fused conversion, precise errors, NF4 refusal on CPU.
Host memory: test_host_memory.py."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ideogram_app.loading.dit import dit_config_from_dict, dit_config_from_shapes, load_transformer
from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.token_layout import build_token_layout
from tests.fixtures.tiny_dit import DIT_FILE, tiny_dit_state_dict, write_tiny_dit

RELEASED = Ideogram4Config()


def state_of(model):
    return {k: v for k, v in model.state_dict().items()}


def test_repo_component_and_file_paths_load_the_same_weights(tmp_path):
    file = write_tiny_dit(tmp_path / "repo", "bf16", seed=1)
    write_tiny_dit(tmp_path / "repo", "bf16", subfolder="unconditional_transformer", seed=2)
    from_repo = load_transformer(tmp_path / "repo")
    from_component = load_transformer(file.parent)
    from_file = load_transformer(file)
    uncond = load_transformer(tmp_path / "repo", subfolder="unconditional_transformer")
    stored = load_file(file)
    for model in (from_repo, from_component, from_file):
        assert model.state_dict().keys() == stored.keys()
        assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    assert not torch.equal(uncond.input_proj.weight, from_repo.input_proj.weight)
    assert from_repo.input_proj.weight.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in from_repo.parameters())


def test_split_keys_are_fused_by_row_concatenation(tmp_path):
    write_tiny_dit(tmp_path / "fused", "bf16", seed=3)
    write_tiny_dit(tmp_path / "split", "split", seed=3)
    assert "layers.0.attention.to_q.weight" in load_file(tmp_path / "split/transformer" / DIT_FILE)
    fused, split = state_of(load_transformer(tmp_path / "fused")), state_of(load_transformer(tmp_path / "split"))
    assert fused.keys() == split.keys()
    assert all(torch.equal(fused[k], split[k]) for k in fused)


def test_fp8_dequantised_at_load_is_exactly_the_formula(tmp_path):
    file = write_tiny_dit(tmp_path, "fp8", seed=4)
    raw = load_file(file)
    model = load_transformer(tmp_path, dtype=torch.float32, fp8="dequantize")
    qkv = "layers.1.attention.qkv"
    expected = raw[qkv + ".weight"].float() * raw[qkv + ".weight_scale"][:, None]
    assert torch.equal(model.get_parameter(qkv + ".weight"), expected)
    assert torch.equal(model.input_proj.bias, raw["input_proj.bias"].float())
    assert isinstance(model.layers[1].attention.qkv, torch.nn.Linear)


def test_fp8_kept_in_memory_gives_the_same_outputs(tmp_path):
    write_tiny_dit(tmp_path, "fp8", seed=5)
    kept = load_transformer(tmp_path, dtype=torch.float32, fp8="keep")
    deq = load_transformer(tmp_path, dtype=torch.float32, fp8="dequantize")
    layer = kept.layers[0].feed_forward.w2
    assert isinstance(layer, Fp8Linear) and layer.weight.dtype == torch.float8_e4m3fn
    assert layer.weight_scale.dtype == torch.float32
    pos, seg, ind = build_token_layout(3, 2, 2)
    x, llm, t = torch.randn(1, 7, 128), torch.randn(1, 7, 416), torch.tensor([0.5])
    with torch.no_grad():
        torch.testing.assert_close(kept(x, t, llm, pos, seg, ind), deq(x, t, llm, pos, seg, ind), rtol=1e-6, atol=1e-6)


def test_fp8_split_keys_in_keep_mode(tmp_path):
    """A split-key fp8 file (q/k/v each with its own scale) fuses weights and scales alike."""
    write_tiny_dit(tmp_path / "fp8", "fp8", seed=6)
    raw = load_file(tmp_path / "fp8/transformer" / DIT_FILE)
    split = {}
    for k, v in raw.items():
        if ".attention.qkv." in k:
            for part, chunk in zip(("to_q", "to_k", "to_v"), v.chunk(3)):
                split[k.replace(".qkv.", f".{part}.")] = chunk.contiguous()
        else:
            split[k.replace(".attention.o.", ".attention.to_out.0.")] = v
    (tmp_path / "split").mkdir()
    save_file(split, tmp_path / "split" / DIT_FILE)
    (tmp_path / "split/config.json").write_text((tmp_path / "fp8/transformer/config.json").read_text())
    a, b = load_transformer(tmp_path / "fp8", fp8="keep"), load_transformer(tmp_path / "split", fp8="keep")
    for k, v in a.state_dict().items():
        assert torch.equal(v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v,
                           b.state_dict()[k].view(torch.uint8) if v.dtype == torch.float8_e4m3fn else b.state_dict()[k]), k


def test_official_config_names_and_shape_inference(tmp_path):
    write_tiny_dit(tmp_path / "official", "bf16", config_style="official", seed=7)
    write_tiny_dit(tmp_path / "diffusers", "bf16", config_style="diffusers", seed=7)
    assert load_transformer(tmp_path / "official").cfg == load_transformer(tmp_path / "diffusers").cfg
    # head dim 128 fits the released mrope_section, so a config-less file can be inferred from shapes
    write_tiny_dit(tmp_path / "noconfig", "fp8", config_style=None, num_heads=1, head_dim=128, num_layers=3,
                   mrope_section=(24, 20, 20))
    cfg = load_transformer(tmp_path / "noconfig").cfg
    assert (cfg.emb_dim, cfg.num_heads, cfg.num_layers, cfg.intermediate_size, cfg.adanln_dim, cfg.llm_features_dim) == (128, 1, 3, 128, 32, 416)
    # the tiny head dim 32 cannot use the released mrope_section: say that config.json is needed
    write_tiny_dit(tmp_path / "tiny_noconfig", "bf16", config_style=None)
    with pytest.raises(ValueError, match="no config.json next to it and mrope_section"):
        load_transformer(tmp_path / "tiny_noconfig")


def test_sharded_index(tmp_path):
    state = {k: v.to(torch.bfloat16) for k, v in tiny_dit_state_dict(seed=8).items()}
    keys = sorted(state)
    shards = {"m-00001-of-00002.safetensors": keys[::2], "m-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, tmp_path / name)
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({"attention_head_dim": 32, "num_attention_heads": 2, "num_layers": 2,
                                                      "intermediate_size": 128, "adaln_dim": 32, "llm_features_dim": 416,
                                                      "mrope_section": [8, 4, 4]}))
    model = load_transformer(tmp_path / "m.safetensors.index.json")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_unknown_layout_names_the_first_keys(tmp_path):
    save_file({"encoder.conv_in.weight": torch.zeros(2, 2), "decoder.up.0.weight": torch.zeros(1)}, tmp_path / "vae.safetensors")
    with pytest.raises(ValueError, match=r"vae.safetensors: not an Ideogram 4 DiT checkpoint.*'decoder.up.0.weight'"):
        load_transformer(tmp_path / "vae.safetensors")


def test_unexpected_and_missing_keys_are_named(tmp_path):
    state = {k: v.to(torch.bfloat16) for k, v in tiny_dit_state_dict().items()}
    state.pop("layers.1.ffn_norm2.weight")
    state["layers.1.ffn_norm3.weight"] = torch.ones(64, dtype=torch.bfloat16)
    write_tiny_dit(tmp_path, "bf16")  # for config.json
    save_file(state, tmp_path / "transformer" / DIT_FILE)
    with pytest.raises(ValueError, match=r"unexpected keys \['layers.1.ffn_norm3.weight'\] \(1 in total\); "
                                         r"missing keys \['layers.1.ffn_norm2.weight'\]"):
        load_transformer(tmp_path)


def test_missing_split_part_is_named(tmp_path):
    file = write_tiny_dit(tmp_path, "split")
    state = load_file(file)
    del state["layers.0.attention.to_k.weight"]
    save_file(state, file)
    with pytest.raises(ValueError, match=r"missing keys \['layers.0.attention.qkv.weight \(q/k/v part \[1\]\)'\]"):
        load_transformer(tmp_path)


def test_wrong_shape_and_bad_fp8_scale_are_named(tmp_path):
    file = write_tiny_dit(tmp_path, "fp8")
    state = load_file(file)
    state["final_layer.linear.weight_scale"] = state["final_layer.linear.weight_scale"][:, None].contiguous()
    save_file(state, file)
    with pytest.raises(ValueError, match=r"'final_layer.linear.weight_scale' must be float32 of shape \[128\].*\[128, 1\]"):
        load_transformer(tmp_path)
    write_tiny_dit(tmp_path, "bf16", num_layers=2)
    cfg = json.loads((tmp_path / "transformer/config.json").read_text())
    cfg["intermediate_size"] = 96
    (tmp_path / "transformer/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"'layers.0.feed_forward.w1.weight' has shape \[128, 64\], the DiT .* expects \[96, 64\]"):
        load_transformer(tmp_path)


def test_bad_fp8_mode():
    with pytest.raises(ValueError, match="fp8 must be 'dequantize' or 'keep'"):
        load_transformer("nowhere", fp8="fast")


def _write_fake_nf4_header_file(folder: Path) -> None:
    """NF4 key layout (bitsandbytes serialisation names and dtypes) with placeholder data: the CPU
    refusal must happen from the header alone, before any data is read."""
    state = {k: v.to(torch.bfloat16) for k, v in tiny_dit_state_dict().items()}
    for name in [k[:-7] for k, v in state.items() if v.dim() == 2 and k != "embed_image_indicator.weight"]:
        w = state[name + ".weight"]
        meta = json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": list(w.shape)})
        state[name + ".weight"] = torch.zeros(w.numel() // 2, 1, dtype=torch.uint8)
        state[name + ".weight.absmax"] = torch.ones(w.numel() // 64)
        state[name + ".weight.quant_map"] = torch.linspace(-1, 1, 16)
        state[name + ".weight.quant_state.bitsandbytes__nf4"] = torch.tensor(list(meta.encode()), dtype=torch.uint8)
    folder.mkdir(parents=True)
    save_file(state, folder / DIT_FILE)


def test_nf4_on_cpu_is_refused_with_a_clear_message(tmp_path):
    _write_fake_nf4_header_file(tmp_path / "transformer")
    with pytest.raises(RuntimeError, match=r"diffusion_pytorch_model.safetensors holds bitsandbytes NF4 weights, which run only on a CUDA device \(asked for cpu\)"):
        load_transformer(tmp_path, device="cpu")



def test_released_config_from_both_naming_schemes():
    diffusers = {"_class_name": "Ideogram4Transformer2DModel", "in_channels": 128, "num_layers": 34,
                 "attention_head_dim": 256, "num_attention_heads": 18, "intermediate_size": 12288,
                 "adaln_dim": 512, "llm_features_dim": 53248, "rope_theta": 5000000,
                 "mrope_section": [24, 20, 20], "norm_eps": 1e-5, "quantization_config": {"load_in_4bit": True}}
    official = {"emb_dim": 4608, "num_layers": 34, "num_heads": 18, "intermediate_size": 12288, "adanln_dim": 512,
                "in_channels": 128, "llm_features_dim": 53248, "rope_theta": 5000000,
                "mrope_section": (24, 20, 20), "norm_eps": 1e-5}
    assert dit_config_from_dict(diffusers) == dit_config_from_dict(official) == RELEASED
    assert RELEASED.head_dim == 256


def test_config_inferred_from_released_shapes():
    with torch.device("meta"):
        model = Ideogram4DiT(RELEASED)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert dit_config_from_shapes(shapes) == RELEASED
    with pytest.raises(ValueError, match="no 'adaln_proj.bias'"):
        dit_config_from_shapes({k: v for k, v in shapes.items() if k != "adaln_proj.bias"})


def test_unusable_config_json_is_named(tmp_path):
    write_tiny_dit(tmp_path, "bf16")
    config = tmp_path / "transformer/config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "mrope_section": [8, 4]}))
    with pytest.raises(ValueError, match=r"config.json: not a usable Ideogram 4 DiT config \(mrope_section needs 3"):
        load_transformer(tmp_path)
    config.write_text("{oops")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        load_transformer(tmp_path)
