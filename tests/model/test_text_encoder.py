"""Text features vs transformers' own Qwen3VLModel hidden states, for the bf16 and fp8 files."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLModel, Qwen3VLTextConfig, Qwen3VLTextModel

import ideogram_app.model.text_encoder as text_encoder_module
from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.model.text_encoder import (
    QWEN3_VL_8B_TEXT_CONFIG,
    TAP_LAYERS,
    PromptTooLongError,
    load_text_encoder,
)
from tests.fixtures.tiny_text_encoder import (
    LLM_FEATURES_DIM,
    write_tiny_text_encoder,
    write_tiny_tokenizer,
)

PROMPT = '{"high_level_description": "A red poster", "elements": [{"type": "text", "text": "HELLO"}]}'


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    out = {}
    for layout in ("bf16", "fp8"):
        root = tmp_path_factory.mktemp(layout)
        write_tiny_text_encoder(root, layout=layout, seed=5)
        write_tiny_tokenizer(root)
        out[layout] = root
    return out


def reference_model(folder, dequantize: bool) -> Qwen3VLModel:
    """transformers' full Qwen3VLModel, with hidden_states[-1] left as the raw last layer output."""
    config = Qwen3VLConfig.from_dict(json.loads((folder / "config.json").read_text()))
    config.text_config.tie_last_hidden_states = False
    model = Qwen3VLModel(config).eval()
    stored = load_file(str(folder / "model.safetensors"))
    state = {}
    for key, tensor in stored.items():
        if key.endswith(".weight_scale"):
            continue
        if dequantize and tensor.dtype == torch.float8_e4m3fn:
            tensor = tensor.float() * stored[key + "_scale"][:, None]
        state[key] = tensor.float()
    model.load_state_dict(state, strict=True)
    return model


def reference_features(model: Qwen3VLModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    hidden = out.hidden_states  # [embeddings, layer 0, ..., layer 35]; index i + 1 is tap i
    assert not torch.allclose(hidden[36], out.last_hidden_state)  # raw, not the final-norm output
    taps = [hidden[i + 1][0] for i in TAP_LAYERS]
    # Interleave written the long way: feature 13 * c + k = channel c of tap k.
    length, width = taps[0].shape
    features = torch.empty(length, width * len(taps))
    for k, tap in enumerate(taps):
        features[:, k :: len(taps)] = tap
    return features[None]


@pytest.mark.parametrize("layout, fp8", [("bf16", "dequantize"), ("fp8", "dequantize"), ("fp8", "keep")])
def test_features_match_transformers_hidden_states(repos, layout, fp8):
    encoder = load_text_encoder(repos[layout], dtype=torch.float32, fp8=fp8)
    features = encoder.encode(PROMPT)
    reference = reference_features(
        reference_model(repos[layout] / "text_encoder", dequantize=layout == "fp8"), encoder.tokenizer.token_ids(PROMPT)
    )
    assert features.shape == (1, encoder.tokenizer.count(PROMPT), LLM_FEATURES_DIM) == reference.shape
    assert features.dtype == torch.float32
    assert (features - reference).abs().max() <= 1e-5 * reference.abs().max()


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


def test_bf16_load_gives_bf16_weights_and_fp32_features(repos):
    encoder = load_text_encoder(repos["bf16"], dtype=torch.bfloat16)
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    features = encoder.encode("a cat")
    assert features.dtype == torch.float32 and features.shape[-1] == encoder.feature_dim == LLM_FEATURES_DIM


def test_vision_tower_is_neither_built_nor_read(repos, monkeypatch):
    read = []
    real_iter = text_encoder_module.iter_tensors

    def recording_iter(header, names=None, transient=None):
        for name, tensor in real_iter(header, names, transient):
            read.append(name)
            yield name, tensor

    monkeypatch.setattr(text_encoder_module, "iter_tensors", recording_iter)
    encoder = load_text_encoder(repos["fp8"], fp8="keep")
    assert read and all(name.startswith("language_model.") for name in read)
    assert not any("visual" in name for name in encoder.state_dict())


def test_over_long_prompt_fails_with_its_count_before_any_model_work(repos):
    encoder = load_text_encoder(repos["bf16"], dtype=torch.float32)

    def forbidden(*args, **kwargs):
        raise AssertionError("the text model ran on an over-long prompt")

    encoder.language_model.forward = forbidden
    prompt = "9" * 2100
    count = encoder.tokenizer.count(prompt)
    assert count > 2048
    with pytest.raises(PromptTooLongError, match=f"prompt is {count} tokens long"):
        encoder.encode(prompt)


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
    # Used when text_encoder/config.json is absent; sizes from docs/model-vae-text.md, "Text features", built on meta.
    with torch.device("meta"):
        model = Qwen3VLTextModel(Qwen3VLTextConfig(**QWEN3_VL_8B_TEXT_CONFIG))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 3) == 7.568
    assert round(model.embed_tokens.weight.numel() / 1e9, 3) == 0.622
    attention = model.layers[35].self_attn
    assert tuple(attention.q_proj.weight.shape) == (4096, 4096)
    assert tuple(attention.k_proj.weight.shape) == (1024, 4096)
    assert tuple(model.layers[0].mlp.down_proj.weight.shape) == (4096, 12288)
    assert len(TAP_LAYERS) * model.config.hidden_size == 53248
