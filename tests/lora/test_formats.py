"""Reading: junk and hostile files are refused with a message naming the problem, partial files warn,
q/k/v splits fuse exactly, diffusers metadata alphas are honoured. Every file is a real safetensors file."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from ideogram_app.lora import RejectedLora, UnreadableLora, apply_lora, config_targets, loaded, read_lora
from ideogram_app.lora.formats import fuse_qkv, LoraModule
from ideogram_app.lora.layer import LoraLinear
from ideogram_app.lora.read import MAX_HEADER_BYTES, MAX_TENSORS
from ideogram_app.model.ideogram4_dit import Ideogram4Config
from tests.lora import loras

TINY = Ideogram4Config(in_channels=128, num_layers=loras.LAYERS, emb_dim=loras.D, num_heads=2, intermediate_size=loras.FF,
                       adanln_dim=loras.ADALN, llm_features_dim=loras.LLM_DIM, mrope_section=(8, 4, 4))


@pytest.fixture(scope="module")
def targets():
    return config_targets(TINY)


def comfy_state(seed=0):
    truth = loras.fused_truth(seed, layers=[0])
    state = {}
    for name, (a, b, alpha) in truth.items():
        state[f"diffusion_model.{name}.lora_A.weight"] = a
        state[f"diffusion_model.{name}.lora_B.weight"] = b
        state[f"diffusion_model.{name}.alpha"] = torch.tensor(alpha)
    return state


def refused(path, targets, error=RejectedLora):
    with pytest.raises(error) as caught:
        read_lora(path, targets)
    assert str(path) in str(caught.value)
    return str(caught.value)


def test_a_file_for_another_model_is_refused(tmp_path, targets):
    path = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}, path)
    message = refused(path, targets)
    assert "no key matches a module of the Ideogram 4 DiT (2 keys, first 'lora_unet_down_blocks_0" in message


def test_wrong_shapes_name_the_key_and_both_shapes(tmp_path, targets):
    state = comfy_state()
    state["diffusion_model.layers.0.attention.o.lora_A.weight"] = torch.zeros(4, 65)
    save_file(state, tmp_path / "a.safetensors")
    message = refused(tmp_path / "a.safetensors", targets)
    assert "key 'diffusion_model.layers.0.attention.o.lora_A.weight' has shape (4, 65), the model's 'layers.0.attention.o' needs (rank, 64)" in message

    state = comfy_state()
    state["diffusion_model.layers.0.feed_forward.w1.lora_B.weight"] = torch.zeros(128, 5)
    save_file(state, tmp_path / "b.safetensors")
    message = refused(tmp_path / "b.safetensors", targets)
    assert "key 'diffusion_model.layers.0.feed_forward.w1.lora_B.weight' has shape (128, 5), the model's 'layers.0.feed_forward.w1' needs (128, 4)" in message


def test_the_released_model_refuses_a_tiny_lora_by_shape(tmp_path):
    save_file(comfy_state(), tmp_path / "tiny.safetensors")
    message = refused(tmp_path / "tiny.safetensors", config_targets())
    assert "key 'diffusion_model.layers.0.adaln_modulation.lora_A.weight' has shape (4, 32), the model's 'layers.0.adaln_modulation' needs (rank, 512)" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_are_refused(tmp_path, targets, bad):
    state = comfy_state()
    state["diffusion_model.layers.0.feed_forward.w2.lora_B.weight"][3, 1] = bad
    save_file(state, tmp_path / "nan.safetensors")
    assert "key 'diffusion_model.layers.0.feed_forward.w2.lora_B.weight' holds NaN or Inf values" in refused(tmp_path / "nan.safetensors", targets)


def test_non_float_factors_and_alphas_are_refused(tmp_path, targets):
    state = comfy_state()
    state["diffusion_model.layers.0.attention.o.lora_A.weight"] = torch.zeros(4, 64, dtype=torch.int32)
    save_file(state, tmp_path / "int.safetensors")
    assert "'diffusion_model.layers.0.attention.o.lora_A.weight' is torch.int32, LoRA factors must be float16" in refused(tmp_path / "int.safetensors", targets)
    state = comfy_state()
    state["diffusion_model.layers.0.attention.o.alpha"] = torch.ones(2)
    save_file(state, tmp_path / "alpha.safetensors")
    assert "'diffusion_model.layers.0.attention.o.alpha' must be one number, got shape (2,)" in refused(tmp_path / "alpha.safetensors", targets)


def test_not_safetensors_truncated_and_hostile_headers_are_unreadable(tmp_path, targets):
    text = tmp_path / "notes.safetensors"
    text.write_text("this is a text file, not a LoRA")
    assert "not a safetensors file" in refused(text, targets, UnreadableLora)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    assert "shorter than the 8-byte header length" in refused(tiny, targets, UnreadableLora)

    good = tmp_path / "good.safetensors"
    save_file(comfy_state(), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-100])
    assert "truncated: its data ends at byte" in refused(cut, targets, UnreadableLora)
    cut.write_bytes(data[:40])
    assert "truncated: the header needs" in refused(cut, targets, UnreadableLora)

    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    assert f"header length {1 << 40} bytes (limit {MAX_HEADER_BYTES})" in refused(huge, targets, UnreadableLora)

    def raw_file(name, header, data=b""):
        blob = json.dumps(header).encode()
        path = tmp_path / name
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
        return path

    lying = raw_file("lying.safetensors", {"x.lora_A.weight": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 16]}}, bytes(16))
    assert "data_offsets [0, 16] do not hold 40000000000 bytes" in refused(lying, targets, UnreadableLora)
    many = raw_file("many.safetensors", {f"k{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(MAX_TENSORS + 1)})
    assert f"{MAX_TENSORS + 1} tensors, more than the {MAX_TENSORS}" in refused(many, targets, UnreadableLora)
    dtype = raw_file("dtype.safetensors", {"k": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, bytes(1))
    assert "tensor 'k': unknown dtype 'Q4'" in refused(dtype, targets, UnreadableLora)
    assert "no such file" in refused(tmp_path / "missing.safetensors", targets, UnreadableLora)


def test_unsupported_adapter_kinds_and_broken_pairs_are_refused(tmp_path, targets):
    cases = {
        "dora": ({"diffusion_model.layers.0.attention.o.dora_scale": torch.ones(64, 1)},
                 "key 'diffusion_model.layers.0.attention.o.dora_scale' belongs to module 'layers.0.attention.o' but is not a plain LoRA factor"),
        "bias": ({"diffusion_model.layers.0.feed_forward.w1.lora_B.bias": torch.ones(128)}, "is not a plain LoRA factor"),
        "kohya dora": ({"lora_unet_layers_0_attention_qkv.dora_scale": torch.ones(192, 1)},
                       "belongs to module 'layers.0.attention.qkv' but is not a plain LoRA factor"),
        "duplicate": ({"layers.0.attention.o.lora_A.weight": torch.zeros(4, 64)},
                      "keys 'diffusion_model.layers.0.attention.o.lora_A.weight' and 'layers.0.attention.o.lora_A.weight' both give the down of 'layers.0.attention.o'"),
        "fused and split": ({"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64),
                             "transformer.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 4)},
                            "'layers.0.attention.qkv' has both a fused key"),
    }
    for name, (extra, expected) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(comfy_state() | extra, path)
        assert expected in refused(path, targets), name
    state = comfy_state()
    del state["diffusion_model.layers.0.adaln_modulation.lora_B.weight"]
    save_file(state, tmp_path / "half.safetensors")
    assert "key 'diffusion_model.layers.0.adaln_modulation.lora_A.weight' has no lora_B/lora_up partner" in refused(tmp_path / "half.safetensors", targets)


def test_a_refused_file_leaves_the_model_untouched(tmp_path, load_ours):
    model = load_ours("bf16")
    state = comfy_state()
    state["diffusion_model.layers.0.feed_forward.w3.lora_A.weight"][0, 0] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    with pytest.raises(RejectedLora, match="holds NaN"):
        apply_lora(model, tmp_path / "nan.safetensors")
    assert loaded(model) == {} and not any(isinstance(m, LoraLinear) for m in model.modules())


def test_partially_unmatched_files_warn_and_list_the_keys(tmp_path, targets, load_ours):
    state = comfy_state() | {
        "diffusion_model.layers.7.attention.qkv.lora_A.weight": torch.zeros(4, 64),  # a block this model does not have
        "diffusion_model.layers.0.attention_norm1.weight": torch.ones(64),  # a norm, not a Linear
    }
    path = tmp_path / "partial.safetensors"
    save_file(state, path)
    with pytest.warns(UserWarning, match=r"2 of 20 keys match no module of the model and are ignored"):
        report = apply_lora(load_ours("bf16"), path)
    assert set(report.unmatched) == {"diffusion_model.layers.7.attention.qkv.lora_A.weight", "diffusion_model.layers.0.attention_norm1.weight"}
    assert len(report.matched) == 6 and "2 keys matched nothing" in report.summary()


def test_split_qkv_fuses_exactly_and_a_shared_a_keeps_its_rank():
    g = torch.Generator().manual_seed(3)
    parts = [LoraModule(torch.randn(r, 64, generator=g), torch.randn(64, r, generator=g), alpha)
             for r, alpha in ((2, 1.0), (3, 6.0), (4, 4.0))]
    fused = fuse_qkv(parts, (192, 64))
    want = torch.cat([p.factor * p.up.double() @ p.down.double() for p in parts])
    got = fused.factor * fused.up.double() @ fused.down.double()
    assert fused.rank == 9 and torch.allclose(got, want, rtol=1e-6, atol=1e-7)
    assert torch.count_nonzero(fused.up) == sum(64 * p.rank for p in parts)  # block-diagonal

    shared = torch.randn(5, 64, generator=g)
    parts = [LoraModule(shared, torch.randn(64, 5, generator=g), 2.5) for _ in range(3)]
    fused = fuse_qkv(parts, (192, 64))
    assert fused.rank == 5 and torch.equal(fused.down, shared) and fused.alpha == 2.5
    assert torch.equal(fused.up, torch.cat([p.up for p in parts]))

    only_v = fuse_qkv([None, None, parts[2]], (192, 64))
    assert only_v.rank == 5 and torch.equal(only_v.up[:128], torch.zeros(128, 5))


def test_diffusers_metadata_alpha_pattern_and_rslora(tmp_path, targets):
    truth = loras.split_truth(20)
    state = {}
    for name, (a, b, _) in truth.items():
        state[f"transformer.{name}.lora_A.weight"] = a
        state[f"transformer.{name}.lora_B.weight"] = b
    config = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.alpha_pattern": {r"^layers\.1\.attention\.to_out\.0": 2},
              "transformer.use_rslora": True}
    save_file(state, tmp_path / "d.safetensors", metadata={"lora_adapter_metadata": json.dumps(config)})
    lora = read_lora(tmp_path / "d.safetensors", targets)
    assert lora.format == "diffusers"
    assert lora.modules["layers.1.attention.o"].factor == pytest.approx(2 / 4**0.5)
    assert lora.modules["layers.0.attention.o"].factor == pytest.approx(8 / 4**0.5)
    assert lora.modules["layers.0.feed_forward.w1"].factor == pytest.approx(8 / 4**0.5)
    save_file(state, tmp_path / "text.safetensors", metadata={"lora_adapter_metadata": json.dumps({"lora_alpha": "eight"})})
    assert "alpha 'eight' for 'lora_alpha' in 'lora_adapter_metadata' is not a finite number" in refused(tmp_path / "text.safetensors", targets)
    config["transformer.use_dora"] = True
    save_file(state, tmp_path / "dora.safetensors", metadata={"lora_adapter_metadata": json.dumps(config)})
    assert "use_dora: DoRA adapters are not supported" in refused(tmp_path / "dora.safetensors", targets)
