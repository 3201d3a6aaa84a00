"""Load the Qwen3-VL text model (and the prompt tokenizer) of an Ideogram 4 repo as an `Ideogram4TextEncoder`.

Only the text model is built and loaded: the checkpoint's `visual.*` tensors are never read
(`checkpoint_layout.text_encoder_keys`). Layouts, detected from the header: official weight-only fp8
(`weight_scale` keys, kept or dequantised by `conversion.py`) or plain bf16.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3VLConfig, Qwen3VLTextConfig, Qwen3VLTextModel

from ideogram_app.loading.checkpoint_layout import LANGUAGE_MODEL_PREFIX, fp8_linear_names, text_encoder_keys
from ideogram_app.loading.config import read_config
from ideogram_app.loading.conversion import Fp8Mode, check_fp8_mode, prepare_fp8_linears
from ideogram_app.loading.safetensors_io import describe_files, read_headers, resolve_safetensors
from ideogram_app.loading.streaming import Target, assign_state_dict, stream_state_dict
from ideogram_app.model.prompt_tokenizer import PromptTokenizer
from ideogram_app.model.text_encoder import Ideogram4TextEncoder

# The Qwen3-VL-8B-Instruct text model (docs/model-vae-text.md, "The Qwen3-VL text model and its
# files"), for a `text_encoder/` shipped without config.json (the bf16 repackage).
QWEN3_VL_8B_TEXT_CONFIG = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
    "attention_bias": False,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
}


def text_config_from_dict(raw: dict[str, Any], source: str = "config.json") -> Qwen3VLTextConfig:
    """The text part of a full Qwen3-VL config (`text_config`), or a text-only config."""
    if "text_config" in raw:
        return Qwen3VLConfig.from_dict(raw).text_config
    if raw.get("model_type") == "qwen3_vl_text":
        return Qwen3VLTextConfig.from_dict(raw)
    raise ValueError(f"{source}: not a Qwen3-VL config (no 'text_config', model_type {raw.get('model_type')!r})")


def _find_tokenizer(path: Path, weights_folder: Path) -> Path:
    for root in (path, weights_folder.parent):
        if (root / "tokenizer").is_dir():
            return root / "tokenizer"
    raise FileNotFoundError(
        f"no tokenizer/ folder in {path} or {weights_folder.parent}; pass tokenizer_path= explicitly"
    )


def load_text_encoder(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    fp8: Fp8Mode = "dequantize",
    tokenizer_path: str | Path | None = None,
) -> Ideogram4TextEncoder:
    """Load the text model of `path` (repo folder, `text_encoder/` folder or `model.safetensors`).

    fp8="dequantize" widens each fp8 Linear to `dtype` once at load; fp8="keep" keeps `Fp8Linear`
    modules (half the memory, a dequantise per forward). Weights stream onto `device` one tensor at a
    time into a meta-device model.
    """
    check_fp8_mode(fp8)
    device = torch.device(device)
    path = Path(path)
    files = resolve_safetensors(path, subfolder="text_encoder")
    where = describe_files(files)
    tokenizer = PromptTokenizer(tokenizer_path or _find_tokenizer(path, files[0].parent))
    text_config = read_config(
        files[0].parent / "config.json", text_config_from_dict, lambda: Qwen3VLTextConfig(**QWEN3_VL_8B_TEXT_CONFIG)
    )
    header = read_headers(files)
    targets = {key: Target(key[len(LANGUAGE_MODEL_PREFIX) :]) for key in text_encoder_keys(header, where)}

    with torch.device("meta"):
        language_model = Qwen3VLTextModel(text_config)
    prepare_fp8_linears(language_model, fp8_linear_names(t.name for t in targets.values()), fp8)
    assign_state_dict(language_model, stream_state_dict(header, targets, device, dtype, fp8), where=where)

    # Non-persistent buffers (RoPE inverse frequencies) are not in the file: rebuild them for real.
    language_model.rotary_emb = type(language_model.rotary_emb)(config=text_config).to(device)
    leftover = [name for name, t in (*language_model.named_parameters(), *language_model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"{where}: tensors left uninitialised after loading: {leftover[:5]}")
    return Ideogram4TextEncoder(language_model.eval().requires_grad_(False), tokenizer)
