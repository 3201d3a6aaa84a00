"""Ideogram4Config checks, the released parameter count, MRoPE (interleave rule, fp32 under autocast), t rounding.
Config parsing and shape inference are the loader's: tests/loading/test_dit.py."""
import pytest
import torch

from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.rope import mrope_axis_of_pair, mrope_cos_sin
from ideogram_app.model.token_layout import IMAGE_POSITION_OFFSET, build_token_layout

RELEASED = Ideogram4Config()


def test_parameter_count_of_the_released_shape_is_the_spec_total():
    with torch.device("meta"):
        model = Ideogram4DiT(RELEASED)
    assert sum(p.numel() for p in model.parameters()) == 9_279_288_448
    assert len(model.state_dict()) == 458


def test_config_rejects_mrope_wider_than_the_head():
    with pytest.raises(ValueError, match=r"mrope_section \(24, 20, 20\) needs 60 frequency pairs, head dim 32 has only 16"):
        Ideogram4Config(emb_dim=64, num_heads=2)


def test_mrope_interleave_rule():
    axis = mrope_axis_of_pair(128, (24, 20, 20))
    assert [(axis == a).sum().item() for a in range(3)] == [88, 20, 20]  # docs/model-dit.md, "MRoPE"
    assert set(torch.nonzero(axis == 1).flatten().tolist()) == set(range(1, 60, 3))
    assert set(torch.nonzero(axis == 2).flatten().tolist()) == set(range(2, 60, 3))
    tiny = mrope_axis_of_pair(16, (8, 4, 4))
    assert torch.nonzero(tiny == 1).flatten().tolist() == [1, 4, 7, 10]
    assert torch.nonzero(tiny == 2).flatten().tolist() == [2, 5, 8, 11]


def test_mrope_angles_stay_fp32_under_bf16_autocast():
    """Image positions sit at 65536+, where bf16 spacing is 512: any bf16 step would be off by radians."""
    pos, _, _ = build_token_layout(4, grid_h=8, grid_w=8)
    head_dim, theta, section = 256, 5e6, (24, 20, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = mrope_cos_sin(pos, head_dim, theta, section, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    axis = mrope_axis_of_pair(head_dim // 2, section)
    angles = pos.double()[..., axis] * inv_freq.double()
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(2)
    assert cos.dtype == torch.float32
    torch.testing.assert_close(cos.double(), angles.cos(), rtol=0, atol=5e-3)
    torch.testing.assert_close(sin.double(), angles.sin(), rtol=0, atol=5e-3)
    # neighbouring image rows stay distinguishable on the h-driven pairs
    image = pos[0, :, 0] == IMAGE_POSITION_OFFSET
    assert torch.unique(cos[0, image, 0, 1]).numel() == 8


def test_forward_under_autocast_matches_bf16_weights_closely():
    torch.manual_seed(0)
    cfg = Ideogram4Config(num_layers=1, emb_dim=64, num_heads=2, intermediate_size=64, adanln_dim=16,
                          llm_features_dim=32, mrope_section=(8, 4, 4))
    model = Ideogram4DiT(cfg).eval()
    pos, seg, ind = build_token_layout(3, 4, 4)
    x, llm, t = torch.randn(1, 19, 128), torch.randn(1, 19, 32), torch.tensor([0.25])
    with torch.no_grad():
        ref = model(x, t, llm, pos, seg, ind)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x, t, llm, pos, seg, ind)
    image = ind == 2
    assert auto.dtype == torch.float32
    assert ((auto - ref)[image].abs().max() / ref[image].abs().max()) < 0.1


def test_t_is_rounded_to_the_compute_dtype_before_the_sinusoid():
    torch.manual_seed(0)
    cfg = Ideogram4Config(num_layers=1, emb_dim=64, num_heads=2, intermediate_size=64, adanln_dim=16,
                          llm_features_dim=32, mrope_section=(8, 4, 4))
    model = Ideogram4DiT(cfg).eval().to(torch.bfloat16)
    pos, seg, ind = build_token_layout(0, 2, 2)
    x = torch.randn(1, 4, 128)
    t = torch.tensor([0.123456])
    with torch.no_grad():
        a = model(x, t, None, pos, seg, ind)
        b = model(x, t.to(torch.bfloat16).float(), None, pos, seg, ind)
        c = model(x, t + 0.01, None, pos, seg, ind)
    assert torch.equal(a, b) and not torch.equal(a, c)
