"""Time one Ideogram 4 DiT forward at the real shapes with random bf16 weights (GPU only).

Ours (mask-free single segment, text projected once) against diffusers' `Ideogram4Transformer2DModel`
holding the same weights, laid out as diffusers' pipeline lays it out (text left-padded to 2048, dense
mask), in one process on one card. Run on the lent GPU machine:

    python benchmarks/dit_forward.py --text-tokens 300 --size 1024

Prints a table: forward (cond / uncond) × implementation, CUDA-event medians in ms, TFLOP/s.
"""
from __future__ import annotations

import argparse

import torch

from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.token_layout import build_token_layout
from tests.fixtures.cuda_timing import median_cuda_ms


def dit_flops(cfg: Ideogram4Config, length: int, text_tokens: int) -> float:
    """Linear + attention FLOPs of the blocks, plus the text projection on text rows (the formula of
    docs/model-dit.md, "Parameter count and FLOPs")."""
    d, dff = cfg.emb_dim, cfg.intermediate_size
    blocks = cfg.num_layers * (length * 2 * (4 * d * d + 3 * d * dff) + 4 * d * length * length)
    return blocks + text_tokens * 2 * cfg.llm_features_dim * d + length * 2 * (2 * cfg.in_channels * d)


def random_dit(cfg: Ideogram4Config) -> Ideogram4DiT:
    with torch.device("meta"):
        model = Ideogram4DiT(cfg).to(torch.bfloat16)
    model = model.to_empty(device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def diffusers_copy(ours: Ideogram4DiT):
    """diffusers' transformer holding our weights (split q/k/v rows), or None if diffusers is missing."""
    try:
        from diffusers import Ideogram4Transformer2DModel
    except ImportError:
        return None
    cfg = ours.cfg
    with torch.device("cuda"):  # built for real (not on meta) so its non-persistent RoPE buffers exist
        theirs = Ideogram4Transformer2DModel(
            in_channels=cfg.in_channels, num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, adaln_dim=cfg.adanln_dim,
            llm_features_dim=cfg.llm_features_dim, rope_theta=cfg.rope_theta, mrope_section=cfg.mrope_section,
        )
    state = {}
    d = cfg.emb_dim
    for key, value in ours.state_dict().items():
        if ".attention.qkv." in key:
            for i, part in enumerate(("to_q", "to_k", "to_v")):
                state[key.replace(".qkv.", f".{part}.")] = value[i * d:(i + 1) * d]
        elif ".attention.o." in key:
            state[key.replace(".o.", ".to_out.0.")] = value
        else:
            state[key] = value
    theirs = theirs.to(torch.bfloat16)
    theirs.load_state_dict(state)
    return theirs.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=34, help="fewer layers for a quick check")
    args = parser.parse_args()

    cfg = Ideogram4Config(num_layers=args.layers)
    grid = args.size // 16
    n_text, n_img = args.text_tokens, grid * grid
    ours = random_dit(cfg)
    gen = torch.Generator(device="cuda").manual_seed(1)
    t = torch.full((1,), 0.3, device="cuda")

    def inputs(text: int, width: int, full_features: bool):
        """Packed inputs with `text` real tokens left-padded to `width` text rows; features cover the text
        block only (ours) or the whole sequence as diffusers' pipeline passes them."""
        pos, seg, ind = (a[:1].cuda() for a in build_token_layout([text, width], grid, grid, batch=2))
        length = width + n_img
        x = torch.randn(1, length, cfg.in_channels, device="cuda", generator=gen)
        rows = length if full_features else width
        feats = torch.randn(1, rows, cfg.llm_features_dim, device="cuda", generator=gen).bfloat16()
        return x, feats, pos, seg, ind

    rows = []
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        x, feats, pos, seg, ind = inputs(n_text, n_text, full_features=False)
        text_hidden = ours.project_text(feats, ind)
        ms = median_cuda_ms(lambda: ours(x, t, None, pos, seg, ind, text_hidden=text_hidden))
        rows.append(("ours", f"cond T={n_text}", ms, dit_flops(cfg, n_text + n_img, n_text)))
        xu, _, posu, segu, indu = inputs(0, 0, full_features=False)
        ms = median_cuda_ms(lambda: ours(xu, t, None, posu, segu, indu))
        rows.append(("ours", "uncond", ms, dit_flops(cfg, n_img, 0)))
        peak_ours = torch.cuda.max_memory_allocated() / 2**30

        theirs = diffusers_copy(ours)
        if theirs is not None:
            del ours
            torch.cuda.empty_cache()
            cases = (
                (f"cond T={n_text} padded 2048", inputs(n_text, 2048, full_features=True), 2048),
                (f"cond T={n_text} unpadded", inputs(n_text, n_text, full_features=True), n_text),
                ("uncond", inputs(0, 0, full_features=True), 0),
            )
            for label, (xx, ff, pp, ss, ii), n in cases:
                ms = median_cuda_ms(lambda: theirs(xx.bfloat16(), t.bfloat16(), ff, pp, ss, ii, return_dict=False))
                rows.append(("diffusers", label, ms, dit_flops(cfg, n + n_img, n)))

    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  size {args.size}^2  layers {cfg.num_layers}")
    print(f"peak memory, ours (weights + forward): {peak_ours:.1f} GiB")
    print(f"{'impl':10s} {'forward':28s} {'ms':>8s} {'TFLOP/s':>8s}")
    for impl, label, ms, flops in rows:
        print(f"{impl:10s} {label:28s} {ms:8.1f} {flops / ms / 1e9:8.0f}")


if __name__ == "__main__":
    main()
