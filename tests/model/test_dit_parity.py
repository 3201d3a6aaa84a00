"""Ideogram4DiT against diffusers' Ideogram4Transformer2DModel (test-only oracle), same weights from
each on-disk layout, several sequence layouts; plus the fast paths against the plain path."""
import pytest
import torch
from diffusers import Ideogram4Transformer2DModel
from safetensors.torch import load_file

from ideogram_app.loading.dit import load_transformer
from ideogram_app.model.ideogram4_dit import segment_attention_mask
from ideogram_app.model.token_layout import build_token_layout
from tests.fixtures.tiny_dit import TINY_DIT_SIZES, to_split_keys, write_tiny_dit

LLM_DIM = 416


def oracle_from_file(file, layout) -> Ideogram4Transformer2DModel:
    """diffusers' model with the file's weights; fp8 dequantised here as w.float() * scale[:, None]."""
    raw = load_file(file)
    if layout == "fp8":
        for key in [k for k in raw if k.endswith(".weight_scale")]:
            weight = key[: -len("_scale")]
            raw[weight] = raw[weight].float() * raw.pop(key)[:, None]
    state = {k: v.float() for k, v in (raw.items() if layout == "split" else to_split_keys(raw).items())}
    s = TINY_DIT_SIZES
    model = Ideogram4Transformer2DModel(
        in_channels=s["in_channels"], num_layers=s["num_layers"], attention_head_dim=s["head_dim"],
        num_attention_heads=s["num_heads"], intermediate_size=s["intermediate_size"], adaln_dim=s["adaln_dim"],
        llm_features_dim=LLM_DIM, rope_theta=s["rope_theta"], mrope_section=s["mrope_section"], norm_eps=s["norm_eps"],
    )
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dits")
    pairs = {}
    for layout in ("bf16", "split", "fp8"):
        file = write_tiny_dit(root / layout, layout, seed=7)
        pairs[layout] = (load_transformer(root / layout, dtype=torch.float32), oracle_from_file(file, layout))
    return pairs


def make_inputs(text_counts, grid=(3, 4), per_token_t=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = len(text_counts)
    pos, seg, ind = build_token_layout(text_counts, *grid, batch=batch)
    length = pos.shape[1]
    x = torch.randn(batch, length, 128, generator=g)
    llm = torch.randn(batch, length, LLM_DIM, generator=g) * (ind == 3).unsqueeze(-1)
    t = torch.rand(batch, length, generator=g) if per_token_t else torch.rand(batch, generator=g)
    return x, t, llm, pos, seg, ind


def max_rel_err(ours, ref, ind):
    image = ind == 2
    return ((ours[image] - ref[image]).abs().max() / ref[image].abs().max()).item()


SEQUENCES = {
    "text+image": dict(text_counts=[7]),
    "image-only": dict(text_counts=[0]),
    "two segments, left padding": dict(text_counts=[5, 2]),
    "per-token t, batch 2": dict(text_counts=[4, 4], per_token_t=True),
}


@pytest.mark.parametrize("layout", ["bf16", "split", "fp8"])
@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_matches_diffusers(models, layout, sequence):
    ours, oracle = models[layout]
    x, t, llm, pos, seg, ind = make_inputs(**SEQUENCES[sequence])
    with torch.no_grad():
        got = ours(x, t, llm, pos, seg, ind)
        want = oracle(x, t, llm, pos, seg, ind, return_dict=False)[0]
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert max_rel_err(got, want, ind) <= 1e-5


def test_unconditional_pass_without_features_matches_diffusers_with_zeros(models):
    ours, oracle = models["fp8"]
    x, t, llm, pos, seg, ind = make_inputs([0], seed=3)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in (ours.llm_cond_norm, ours.llm_cond_proj)]
    try:
        with torch.no_grad():
            got = ours(x, t, None, pos, seg, ind)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []  # the 53248-wide text path never runs
    with torch.no_grad():
        want = oracle(x, t, torch.zeros(*x.shape[:2], LLM_DIM), pos, seg, ind, return_dict=False)[0]
    assert max_rel_err(got, want, ind) <= 1e-5


def test_masked_padded_rows_equal_mask_free_unpadded_rows(models):
    """Row 1 of a left-padded batch (dense segment mask) must equal the same prompt run alone
    (single segment → SDPA without a mask)."""
    ours, _ = models["bf16"]
    x, t, llm, pos, seg, ind = make_inputs([6, 3], seed=5)
    assert segment_attention_mask(seg) is not None
    x1, t1, llm1, pos1, seg1, ind1 = (v[1:2, 3:] if v.dim() > 1 else v[1:2] for v in (x, t, llm, pos, seg, ind))
    assert segment_attention_mask(seg1) is None
    with torch.no_grad():
        padded = ours(x, t, llm, pos, seg, ind)[1:2, 3:]
        alone = ours(x1, t1, llm1, pos1, seg1, ind1)
    assert max_rel_err(padded, alone, ind1) <= 1e-5


def test_attention_with_all_true_mask_equals_no_mask(models):
    ours, _ = models["bf16"]
    attn = ours.layers[0].attention
    x, t, llm, pos, seg, ind = make_inputs([4])
    from ideogram_app.model.rope import mrope_cos_sin

    cfg = ours.cfg
    cos, sin = mrope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, torch.float32)
    h = torch.randn(1, pos.shape[1], cfg.emb_dim)
    full = torch.ones(1, 1, pos.shape[1], pos.shape[1], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(attn(h, cos, sin, None), attn(h, cos, sin, full), rtol=1e-5, atol=1e-6)


def test_text_hidden_and_text_block_features_equal_the_plain_path(models):
    ours, _ = models["fp8"]
    x, t, llm, pos, seg, ind = make_inputs([5, 2], seed=9)
    text_len = 5  # the [pad][text] block; image rows follow
    with torch.no_grad():
        plain = ours(x, t, llm, pos, seg, ind)
        text_hidden = ours.project_text(llm[:, :text_len], ind)
        assert text_hidden.shape == (2, text_len, ours.cfg.emb_dim)
        assert (text_hidden[ind[:, :text_len] != 3] == 0).all()
        reused = ours(x, t, None, pos, seg, ind, text_hidden=text_hidden)
        block_only = ours(x, t, llm[:, :text_len], pos, seg, ind)
    torch.testing.assert_close(reused, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(block_only, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("text_counts", [[7], [5, 2]], ids=["one segment", "left padding"])
def test_prepared_positions_equal_the_plain_path_and_skip_the_rope_tables(models, monkeypatch, text_counts):
    import ideogram_app.model.ideogram4_dit as dit_module

    ours, oracle = models["bf16"]
    x, t, llm, pos, seg, ind = make_inputs(text_counts, seed=11)
    with torch.no_grad():
        positions = ours.prepare_positions(pos, seg)
        assert (positions.mask is None) == (len(text_counts) == 1)
        calls = []
        original = dit_module.mrope_cos_sin
        monkeypatch.setattr(dit_module, "mrope_cos_sin", lambda *a, **k: calls.append(1) or original(*a, **k))
        prepared = ours(x, t, llm, pos, seg, ind, positions=positions)
        assert calls == []  # the step loop never rebuilds the angle tables
        ref = oracle(x, t, llm, pos, seg, ind, return_dict=False)[0]
    assert max_rel_err(prepared, ref, ind) <= 1e-5


def test_bf16_compute_tracks_fp32(models):
    ours, _ = models["bf16"]
    x, t, llm, pos, seg, ind = make_inputs([5])
    t = t.to(torch.bfloat16).float()  # bf16 compute rounds t first (official); give fp32 the same t
    with torch.no_grad():
        ref = ours(x, t, llm, pos, seg, ind)
        ours.to(torch.bfloat16)
        try:
            low = ours(x, t, llm, pos, seg, ind)
        finally:
            ours.to(torch.float32)
    assert low.dtype == torch.float32
    assert max_rel_err(low, ref, ind) < 0.1


def test_shape_errors_are_precise(models):
    ours, _ = models["bf16"]
    x, t, llm, pos, seg, ind = make_inputs([2])
    with pytest.raises(ValueError, match="x has 64 channels, the DiT expects 128"):
        ours(x[..., :64], t, llm, pos, seg, ind)
    with pytest.raises(ValueError, match=r"expected position_ids \(1, 14, 3\)"):
        ours(x, t, llm, pos[..., :2], seg, ind)
