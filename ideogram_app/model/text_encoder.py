"""Ideogram 4 text features from the Qwen3-VL language model (spec §5).

Only the text model is built and loaded: the checkpoint's `visual.*` tensors are never read. The
feature of a token is the raw output (before the final norm) of decoder layers 0, 3, ..., 33, 35,
interleaved hidden-channel-major: index 13*c + k holds channel c of tap k (pitfall 9). That is the
order `llm_cond_norm`/`llm_cond_proj` were trained on; concatenating whole layers would silently
mismatch the DiT.
"""

import json
import threading
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLTextConfig, Qwen3VLTextModel

from ideogram_app.model.fp8 import (
    DEQUANT_WORKSPACE_ELEMENTS,
    FP8_DTYPE,
    dequantize_fp8,
    fp8_linear_names,
    swap_linears_for_fp8,
)
from ideogram_app.model.prompt_tokenizer import MAX_TEXT_TOKENS, PromptTokenizer, PromptTooLongError
from ideogram_app.model.safetensors_io import (
    TensorInfo,
    assign_state_dict,
    iter_tensors,
    read_headers,
    read_tensor,
    resolve_safetensors,
)

__all__ = [
    "MAX_TEXT_TOKENS",
    "TAP_LAYERS",
    "Ideogram4TextEncoder",
    "PromptTokenizer",
    "PromptTooLongError",
    "load_text_encoder",
]

TAP_LAYERS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 35)
LANGUAGE_MODEL_PREFIX = "language_model."
VISION_PREFIX = "visual."

# Qwen3-VL-8B-Instruct text model (spec §5.1), for a `text_encoder/` shipped without config.json
# (the bf16 repackage).
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


class Ideogram4TextEncoder(nn.Module):
    """Qwen3-VL text model + its prompt tokenizer -> (1, N, 13 * hidden) fp32 features."""

    def __init__(self, language_model: Qwen3VLTextModel, tokenizer: PromptTokenizer):
        super().__init__()
        layers = len(language_model.layers)
        if layers <= max(TAP_LAYERS):
            raise ValueError(f"the text model has {layers} decoder layers; Ideogram 4 taps layer {max(TAP_LAYERS)}")
        self.language_model = language_model
        self.tokenizer = tokenizer
        self._tap_lock = threading.Lock()  # the tap hooks are per call; one forward at a time

    @property
    def feature_dim(self) -> int:
        return len(TAP_LAYERS) * self.language_model.config.hidden_size

    def encode(self, prompt: str) -> torch.Tensor:
        """Prompt -> (1, N, 13 * hidden) fp32; `PromptTooLongError` before any model work."""
        ids = self.tokenizer.token_ids(prompt)
        device = self.language_model.embed_tokens.weight.device
        return self.features(torch.tensor([ids], dtype=torch.long, device=device))

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unpadded (B, L) ids -> (B, L, 13 * hidden) fp32 interleaved tap features."""
        taps: list[torch.Tensor] = []
        with self._tap_lock:
            hooks = [
                self.language_model.layers[i].register_forward_hook(lambda _module, _args, out: taps.append(out))
                for i in TAP_LAYERS
            ]
            try:
                self.language_model(input_ids=input_ids, use_cache=False)
            finally:
                for hook in hooks:
                    hook.remove()
        stacked = torch.stack(taps)  # (13, B, L, H), layer order = execution order
        b, length, hidden = stacked.shape[1:]
        return stacked.permute(1, 2, 3, 0).reshape(b, length, hidden * len(TAP_LAYERS)).float()


def _read_text_config(folder: Path) -> Qwen3VLTextConfig:
    config_file = folder / "config.json"
    if not config_file.is_file():
        return Qwen3VLTextConfig(**QWEN3_VL_8B_TEXT_CONFIG)
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file}: not valid JSON ({exc})") from None
    if "text_config" in raw:
        return Qwen3VLConfig.from_dict(raw).text_config
    if raw.get("model_type") == "qwen3_vl_text":
        return Qwen3VLTextConfig.from_dict(raw)
    raise ValueError(f"{config_file}: not a Qwen3-VL config (no 'text_config', model_type {raw.get('model_type')!r})")


def _language_model_keys(header: Mapping[str, TensorInfo], where: str) -> list[str]:
    """Stored keys of the text model; vision keys are skipped, anything else is an error."""
    stray = sorted(k for k in header if not k.startswith((LANGUAGE_MODEL_PREFIX, VISION_PREFIX)))
    if stray:
        raise ValueError(
            f"{where}: not a Qwen3VLModel state dict (expected 'language_model.*' and 'visual.*' keys "
            f"with no prefix); unexpected keys {stray[:5]}"
        )
    keys = [k for k in header if k.startswith(LANGUAGE_MODEL_PREFIX)]
    if not keys:
        raise ValueError(f"{where}: no 'language_model.*' tensors found")
    for key in keys:
        if header[key].dtype != FP8_DTYPE:
            continue
        scale = header.get(key + "_scale")
        rows = header[key].shape[0]
        if scale is None or scale.dtype != torch.float32 or scale.shape != (rows,):
            found = "missing" if scale is None else f"{scale.dtype} {list(scale.shape)}"
            raise ValueError(f"{where}: fp8 weight {key!r} needs a float32 '{key}_scale' of shape [{rows}], {found}")
    return keys


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
    fp8: str = "dequantize",
    tokenizer_path: str | Path | None = None,
) -> Ideogram4TextEncoder:
    """Load the text model of `path` (repo folder, `text_encoder/` folder or `model.safetensors`).

    Layout is detected from the header: official weight-only fp8 (`weight_scale` keys) or plain.
    fp8="dequantize" widens each fp8 Linear to `dtype` once at load; fp8="keep" keeps `Fp8Linear`
    modules (half the memory, a dequantise per forward). Weights stream onto `device` one tensor at a
    time into a meta-device model.
    """
    if fp8 not in ("dequantize", "keep"):
        raise ValueError(f"fp8 must be 'dequantize' or 'keep', got {fp8!r}")
    path = Path(path)
    files = resolve_safetensors(path, subfolder="text_encoder")
    where = str(files[0])
    tokenizer = PromptTokenizer(tokenizer_path or _find_tokenizer(path, files[0].parent))
    text_config = _read_text_config(files[0].parent)
    header = read_headers(files)
    keys = _language_model_keys(header, where)
    stored = {key: key[len(LANGUAGE_MODEL_PREFIX) :] for key in keys}

    with torch.device("meta"):
        language_model = Qwen3VLTextModel(text_config)
    if fp8 == "keep":
        swap_linears_for_fp8(language_model, fp8_linear_names(stored.values()))

    state: dict[str, torch.Tensor] = {}
    names, fp8_weights, workspace = keys, set(), None
    if fp8 == "dequantize":
        # fp8 weights are widened at once: each is read into one reused buffer and widened through one
        # reused fp32 workspace, so no per-layer temporaries fragment the heap.
        names = [k for k in keys if not k.endswith(".weight_scale")]
        fp8_weights = {k for k in names if header[k].dtype == FP8_DTYPE}
        workspace = torch.empty(DEQUANT_WORKSPACE_ELEMENTS, dtype=torch.float32, device=device)
    for key, tensor in iter_tensors(header, names, transient=fp8_weights.__contains__):
        if key in fp8_weights:
            scale = read_tensor(header[key + "_scale"])
            tensor = dequantize_fp8(tensor.to(device), scale.to(device), dtype, workspace)
        elif tensor.dtype == FP8_DTYPE or key.endswith(".weight_scale"):
            tensor = tensor.to(device)
        else:
            tensor = tensor.to(device=device, dtype=dtype)
        state[stored[key]] = tensor
    assign_state_dict(language_model, state, where=where)

    # Non-persistent buffers (RoPE inverse frequencies) are not in the file: rebuild them for real.
    language_model.rotary_emb = type(language_model.rotary_emb)(config=text_config).to(device)
    leftover = [name for name, t in (*language_model.named_parameters(), *language_model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"{where}: tensors left uninitialised after loading: {leftover[:5]}")
    return Ideogram4TextEncoder(language_model.eval().requires_grad_(False), tokenizer)
