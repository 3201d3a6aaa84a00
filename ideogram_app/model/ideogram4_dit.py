"""The Ideogram 4 DiT: one single-stream transformer over packed `[text][image]` tokens.

Parameter names are the official fused layout (`attention.qkv`, `attention.o`, …), so the official
fp8/nf4 files and the bf16 repackage load without renaming; diffusers' split keys are converted at load
(`ideogram_app/loading/checkpoint_layout.py`). Semantics (docs/model-dit.md, "Time convention and
output"): t = 0 is noise, t = 1 is data, the output is the velocity x_data − ε in t-time, fp32, shape
of `x`.

Performance choices (docs/model-dit.md, "Performance choices"):
- no attention mask when every row is one segment (a dense bool mask makes SDPA ~3x slower);
- text features normalised and projected only on the text rows, once per prompt (`project_text`),
  and reusable across steps through `text_hidden=`;
- `llm_features=None` (the unconditional pass) skips the text path entirely.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ideogram_app.model.rope import apply_rope, mrope_cos_sin
from ideogram_app.model.token_layout import LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR


@dataclass
class Ideogram4Config:
    """Hyper-parameters, with the official dataclass field names and the released values as defaults.

    `norm_eps` is the eps of every RMSNorm inside the blocks, the per-head QK norms included; the
    text-feature RMSNorm and the final LayerNorm use fixed 1e-6 (docs/model-dit.md, "Norm epsilons").
    """

    in_channels: int = 128
    num_layers: int = 34
    emb_dim: int = 4608
    num_heads: int = 18
    intermediate_size: int = 12288
    adanln_dim: int = 512
    llm_features_dim: int = 53248
    rope_theta: float = 5_000_000
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.mrope_section = tuple(int(s) for s in self.mrope_section)
        if len(self.mrope_section) != 3:
            raise ValueError(f"mrope_section needs 3 entries (t, h, w), got {self.mrope_section}")
        if self.emb_dim % self.num_heads:
            raise ValueError(f"emb_dim {self.emb_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")
        if 3 * max(self.mrope_section[1:]) > self.head_dim // 2:
            raise ValueError(
                f"mrope_section {self.mrope_section} needs {3 * max(self.mrope_section[1:])} frequency pairs, "
                f"head dim {self.head_dim} has only {self.head_dim // 2}"
            )

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.num_heads


class TimestepEmbedding(nn.Module):
    """Sinusoid of 1e4·t (sine half first, last frequency 1e-4) → Linear → SiLU → Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp_in = nn.Linear(dim, dim)
        self.mlp_out = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = self.dim // 2
        # t is rounded to the compute dtype before the sinusoid, as the official model does.
        scaled = 1e4 * t.to(dtype).float()
        freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(1e4) / (half - 1)))
        angles = scaled.unsqueeze(-1) * freqs
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)
        return self.mlp_out(F.silu(self.mlp_in(emb)))


class Attention(nn.Module):
    """Fused-qkv self-attention with per-head QK RMSNorm and MRoPE."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.norm_q = nn.RMSNorm(self.head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(self.head_dim, eps=eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, self.head_dim).unbind(2)
        q = apply_rope(self.norm_q(q), cos, sin)
        k = apply_rope(self.norm_k(k), cos, sin)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(b, length, -1))


class FeedForward(nn.Module):
    """SwiGLU without biases: w2(SiLU(w1 x) · w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Sandwich-norm block, adaLN scale + tanh gate, no shift terms."""

    def __init__(self, cfg: Ideogram4Config):
        super().__init__()
        d = cfg.emb_dim
        self.attention = Attention(d, cfg.num_heads, cfg.norm_eps)
        self.feed_forward = FeedForward(d, cfg.intermediate_size)
        self.attention_norm1 = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.attention_norm2 = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.ffn_norm1 = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.ffn_norm2 = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.adaln_modulation = nn.Linear(cfg.adanln_dim, 4 * d)

    def forward(self, h, adaln_input, cos, sin, mask):
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaln_modulation(adaln_input).chunk(4, dim=-1)
        a = self.attention(self.attention_norm1(h) * (1 + scale_msa), cos, sin, mask)
        h = h + torch.tanh(gate_msa) * self.attention_norm2(a)
        f = self.feed_forward(self.ffn_norm1(h) * (1 + scale_mlp))
        return h + torch.tanh(gate_mlp) * self.ffn_norm2(f)


class FinalLayer(nn.Module):
    """Affine-free LayerNorm, scale from SiLU(adaln_input) (a second SiLU), then Linear to 128."""

    def __init__(self, cfg: Ideogram4Config):
        super().__init__()
        self.linear = nn.Linear(cfg.emb_dim, cfg.in_channels)
        self.adaln_modulation = nn.Linear(cfg.adanln_dim, cfg.emb_dim)

    def forward(self, h: torch.Tensor, adaln_input: torch.Tensor) -> torch.Tensor:
        scale = 1 + self.adaln_modulation(F.silu(adaln_input))
        return self.linear(F.layer_norm(h, (h.shape[-1],), eps=1e-6) * scale)


@dataclass
class SequencePositions:
    """The step-independent attention inputs of one packed layout: MRoPE tables and the segment mask.

    Computed once per generation (`Ideogram4DiT.prepare_positions`) and passed to every step, so the
    loop neither rebuilds the fp32 angle tables nor syncs with the host to decide on the mask.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None


def segment_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor | None:
    """Boolean (B, 1, L, L) block mask, or None when each row is a single segment (mask-free SDPA)."""
    if bool((segment_ids == segment_ids[:, :1]).all()):
        return None
    return (segment_ids[:, :, None] == segment_ids[:, None, :]).unsqueeze(1)


class Ideogram4DiT(nn.Module):
    """Ideogram 4 transformer (`transformer/` and `unconditional_transformer/` alike)."""

    def __init__(self, cfg: Ideogram4Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.emb_dim
        self.input_proj = nn.Linear(cfg.in_channels, d)
        self.llm_cond_norm = nn.RMSNorm(cfg.llm_features_dim, eps=1e-6)
        self.llm_cond_proj = nn.Linear(cfg.llm_features_dim, d)
        self.t_embedding = TimestepEmbedding(d)
        self.adaln_proj = nn.Linear(d, cfg.adanln_dim)
        self.embed_image_indicator = nn.Embedding(2, d)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_layer = FinalLayer(cfg)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activation dtype: that of the unquantised tensors (fp8/nf4 linears widen to it)."""
        return self.embed_image_indicator.weight.dtype

    def project_text(self, llm_features: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:
        """RMSNorm + 53248→d projection of the text rows only; zeros elsewhere.

        `llm_features` is (B, T, F) covering the first T positions of the packed sequence (T = L for the
        official full-length layout, or just the `[pad][text]` block). Returns (B, T, d) in the compute
        dtype; pass it back as `text_hidden=` on every denoising step of the same prompt.
        """
        dtype = self.compute_dtype
        b, t_len, _ = llm_features.shape
        is_text = indicator[:, :t_len] == LLM_TOKEN_INDICATOR
        rows = llm_features[is_text].to(dtype)
        out = torch.zeros(b, t_len, self.cfg.emb_dim, dtype=dtype, device=llm_features.device)
        out[is_text] = self.llm_cond_proj(self.llm_cond_norm(rows)).to(dtype)
        return out

    def prepare_positions(self, position_ids: torch.Tensor, segment_ids: torch.Tensor) -> SequencePositions:
        """MRoPE cos/sin (fp32 angles, cast to the compute dtype) and the mask (None for one segment)."""
        cos, sin = mrope_cos_sin(
            position_ids, self.cfg.head_dim, self.cfg.rope_theta, self.cfg.mrope_section, self.compute_dtype
        )
        return SequencePositions(cos, sin, segment_attention_mask(segment_ids))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        llm_features: torch.Tensor | None,
        position_ids: torch.Tensor,
        segment_ids: torch.Tensor,
        indicator: torch.Tensor,
        *,
        text_hidden: torch.Tensor | None = None,
        positions: SequencePositions | None = None,
    ) -> torch.Tensor:
        """Velocity (B, L, in_channels) in fp32; only rows with indicator 2 are meaningful.

        `t` is (B,) or (B, L), 0 = noise, 1 = data. `llm_features=None` (and no `text_hidden`) is the
        unconditional pass: no text rows are expected and the text path never runs. `positions` (from
        `prepare_positions` on the same `position_ids`/`segment_ids`) skips rebuilding them.
        """
        b, length, channels = x.shape
        if channels != self.cfg.in_channels:
            raise ValueError(f"x has {channels} channels, the DiT expects {self.cfg.in_channels}")
        if position_ids.shape != (b, length, 3) or segment_ids.shape != (b, length) or indicator.shape != (b, length):
            raise ValueError(
                f"for x of shape {tuple(x.shape)} expected position_ids ({b}, {length}, 3), segment_ids and "
                f"indicator ({b}, {length}); got {tuple(position_ids.shape)}, {tuple(segment_ids.shape)}, "
                f"{tuple(indicator.shape)}"
            )
        dtype = self.compute_dtype
        is_image = indicator == OUTPUT_IMAGE_INDICATOR
        image_mask = is_image.unsqueeze(-1).to(dtype)

        h = self.input_proj(x.to(dtype) * image_mask) * image_mask
        if text_hidden is None and llm_features is not None:
            text_hidden = self.project_text(llm_features, indicator)
        if text_hidden is not None:
            t_len = text_hidden.shape[1]
            h = torch.cat([h[:, :t_len] + text_hidden.to(dtype), h[:, t_len:]], dim=1)
        h = h + self.embed_image_indicator(is_image.long())

        t_emb = self.t_embedding(t, dtype)
        if t.dim() == 1:
            t_emb = t_emb.unsqueeze(1)
        adaln_input = F.silu(self.adaln_proj(t_emb))

        if positions is None:
            positions = self.prepare_positions(position_ids, segment_ids)
        for layer in self.layers:
            h = layer(h, adaln_input, positions.cos, positions.sin, positions.mask)
        return self.final_layer(h, adaln_input).float()
