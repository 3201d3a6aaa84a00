"""Ideogram 4 text features from the Qwen3-VL language model (docs/model-vae-text.md, "Text features").

The feature of a token is the raw output (before the final norm) of decoder layers 0, 3, ..., 33, 35,
interleaved hidden-channel-major: index 13*c + k holds channel c of tap k. That is the order
`llm_cond_norm`/`llm_cond_proj` were trained on; concatenating whole layers would silently mismatch
the DiT. The loader (files -> this module) is `ideogram_app/loading/text_encoder.py`.
"""

import threading

import torch
from torch import nn
from transformers import Qwen3VLTextModel

from ideogram_app.model.prompt_tokenizer import PromptTokenizer

TAP_LAYERS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 35)


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

