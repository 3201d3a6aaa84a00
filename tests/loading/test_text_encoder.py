"""load_text_encoder on real files: fp8 kept or widened, the vision tower never read, path forms,
the default Qwen3-VL-8B config, and precise errors for foreign or incomplete files."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen3VLTextConfig, Qwen3VLTextModel

import ideogram_app.loading.streaming as streaming_module
from ideogram_app.loading.text_encoder import QWEN3_VL_8B_TEXT_CONFIG, load_text_encoder
from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.model.text_encoder import TAP_LAYERS


@pytest.fixture(scope="module")
def repos(text_encoder_repos):
    return text_encoder_repos


def test_fp8_modes_keep_or_widen_the_linears(repos):
    kept = load_text_encoder(repos["fp8"], fp8="keep").language_model
    widened = load_text_encoder(repos["fp8"], fp8="dequantize", dtype=torch.bfloat16).language_model
    proj = kept.layers[7].self_attn.q_proj
    assert isinstance(proj, Fp8Linear) and proj.weight.dtype == torch.float8_e4m3fn
    assert proj.weight_scale.dtype == torch.float32
    linear = widened.layers[7].self_attn.q_proj
    assert type(linear) is nn.Linear and linear.weight.dtype == torch.bfloat16
    expected = (proj.weight.float() * proj.weight_scale[:, None]).to(torch.bfloat16)
    assert torch.equal(linear.weight, expected)
    assert kept.embed_tokens.weight.dtype == torch.bfloat16  # non-Linear tensors at the compute dtype


def test_vision_tower_is_neither_built_nor_read(repos, monkeypatch):
    read = []
    real_iter = streaming_module.iter_tensors

    def recording_iter(header, names=None, transient=None):
        for name, tensor in real_iter(header, names, transient):
            read.append(name)
            yield name, tensor

    monkeypatch.setattr(streaming_module, "iter_tensors", recording_iter)
    encoder = load_text_encoder(repos["fp8"], fp8="keep")
    assert read and all(name.startswith("language_model.") for name in read)
    assert not any("visual" in name for name in encoder.state_dict())


def test_component_folder_and_file_paths_with_explicit_tokenizer(repos):
    folder = repos["bf16"] / "text_encoder"
    tokenizer = repos["bf16"] / "tokenizer"
    expected = load_text_encoder(repos["bf16"], dtype=torch.float32).encode("hello")
    from_folder = load_text_encoder(folder, dtype=torch.float32).encode("hello")  # finds ../tokenizer
    from_file = load_text_encoder(folder / "model.safetensors", dtype=torch.float32, tokenizer_path=tokenizer)
    assert torch.equal(from_folder, expected)
    assert torch.equal(from_file.encode("hello"), expected)


def test_fp8_weight_without_scale_is_named(repos, tmp_path):
    state = load_file(str(repos["fp8"] / "text_encoder" / "model.safetensors"))
    del state["language_model.layers.3.mlp.down_proj.weight_scale"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'language_model\.layers\.3\.mlp\.down_proj\.weight' needs a float32"):
        load_text_encoder(tmp_path / "model.safetensors", tokenizer_path=repos["fp8"] / "tokenizer")


def test_prefixed_or_foreign_keys_are_rejected(repos, tmp_path):
    state = load_file(str(repos["bf16"] / "text_encoder" / "model.safetensors"))
    state = {"model." + key: value for key, value in state.items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"not a Qwen3VLModel state dict.*'model\.language_model\."):
        load_text_encoder(tmp_path / "model.safetensors", tokenizer_path=repos["bf16"] / "tokenizer")


def test_default_text_config_is_qwen3_vl_8b():
    # Used when text_encoder/config.json is absent; sizes from docs/model-vae-text.md,
    # "The Qwen3-VL text model and its files", built on meta.
    with torch.device("meta"):
        model = Qwen3VLTextModel(Qwen3VLTextConfig(**QWEN3_VL_8B_TEXT_CONFIG))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 3) == 7.568
    assert round(model.embed_tokens.weight.numel() / 1e9, 3) == 0.622
    attention = model.layers[35].self_attn
    assert tuple(attention.q_proj.weight.shape) == (4096, 4096)
    assert tuple(attention.k_proj.weight.shape) == (1024, 4096)
    assert tuple(model.layers[0].mlp.down_proj.weight.shape) == (4096, 12288)
    assert len(TAP_LAYERS) * model.config.hidden_size == 53248
