"""Text features vs transformers' own Qwen3VLModel hidden states, for the bf16 and fp8 files.
Loading paths, fp8 modes and file errors: tests/loading/test_text_encoder.py."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen3VLConfig, Qwen3VLModel

from ideogram_app.loading.text_encoder import load_text_encoder
from ideogram_app.model.prompt_tokenizer import PromptTooLongError
from ideogram_app.model.text_encoder import TAP_LAYERS
from tests.fixtures.tiny_text_encoder import LLM_FEATURES_DIM

PROMPT = '{"high_level_description": "A red poster", "elements": [{"type": "text", "text": "HELLO"}]}'


@pytest.fixture(scope="module")
def repos(text_encoder_repos):
    return text_encoder_repos


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


def test_bf16_load_gives_bf16_weights_and_fp32_features(repos):
    encoder = load_text_encoder(repos["bf16"], dtype=torch.bfloat16)
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    features = encoder.encode("a cat")
    assert features.dtype == torch.float32 and features.shape[-1] == encoder.feature_dim == LLM_FEATURES_DIM


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
