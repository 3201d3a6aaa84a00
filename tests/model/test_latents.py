"""Latent constants and the (p, q, c) patchify, checked against docs/model-vae-text.md, "Latents"."""

import pytest
import torch

from ideogram_app.model.latents import (
    LATENT_SCALE,
    LATENT_SHIFT,
    denormalize_latents,
    normalize_latents,
    patchify,
    unpatchify,
)

# The spot values of docs/model-vae-text.md, "Latents", typed in from the published tables (channel: value).
SPEC_SHIFT = {0: 0.01984364, 14: 0.3758261, 32: 0.02583857, 64: 0.01924137, 96: 0.02578168, 127: -0.01760592}
SPEC_SCALE = {0: 1.63933691, 35: 1.91310663, 67: 1.92784786, 99: 1.94067348, 121: 1.53075757, 127: 1.68533454}


def test_constants_have_128_values_matching_the_spec_table():
    assert len(LATENT_SHIFT) == 128 and len(LATENT_SCALE) == 128
    for channel, value in SPEC_SHIFT.items():
        assert LATENT_SHIFT[channel] == pytest.approx(value, abs=1e-8)
    for channel, value in SPEC_SCALE.items():
        assert LATENT_SCALE[channel] == pytest.approx(value, abs=1e-8)


@pytest.mark.parametrize("values", [LATENT_SHIFT, LATENT_SCALE], ids=["shift", "scale"])
def test_constants_repeat_with_period_32_as_the_pqc_order_predicts(values):
    table = torch.tensor(values, dtype=torch.float64)
    by_patch_position = table.view(4, 32)  # row = 2p + q, column = VAE channel c
    # The four values of one VAE channel c agree closely ...
    assert torch.corrcoef(by_patch_position).min() > 0.98
    spread_within = by_patch_position.max(0).values - by_patch_position.min(0).values
    assert spread_within.max() < 0.06
    assert spread_within.median() < 0.15 * table.std()

    # ... and channel identity explains nearly all variation; grouping by 4 consecutive
    # channels (FLUX.2's own (c, p, q) packing) explains little.
    def explained(groups: torch.Tensor) -> float:
        return float(1 - ((groups - groups.mean(0)) ** 2).mean() / table.var(unbiased=False))

    assert explained(by_patch_position) > 0.98
    assert explained(table.view(32, 4).T) < 0.5


def reference_patchify(z: torch.Tensor) -> torch.Tensor:
    """The patchify rule spelled out element by element: token r*gw + s, channel (2p + q)*32 + c."""
    b, c, h, w = z.shape
    gh, gw = h // 2, w // 2
    out = torch.empty(b, gh * gw, 128, dtype=z.dtype)
    for n in range(b):
        for r in range(gh):
            for s in range(gw):
                for p in range(2):
                    for q in range(2):
                        for ch in range(c):
                            out[n, r * gw + s, (2 * p + q) * 32 + ch] = z[n, ch, 2 * r + p, 2 * s + q]
    return out


def test_patchify_matches_the_elementwise_definition():
    z = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(0))
    tokens = patchify(z)
    assert tokens.shape == (2, 6, 128)
    assert torch.equal(tokens, reference_patchify(z))


def test_unpatchify_inverts_patchify_and_rejects_a_wrong_grid():
    z = torch.randn(1, 32, 6, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(unpatchify(patchify(z), 3, 5), z)
    with pytest.raises(ValueError, match=r"3\*4=12"):
        unpatchify(patchify(z), 3, 4)


def test_patchify_rejects_non_latent_shapes():
    with pytest.raises(ValueError, match=r"\(1, 16, 4, 4\)"):
        patchify(torch.zeros(1, 16, 4, 4))
    with pytest.raises(ValueError, match=r"\(1, 32, 5, 4\)"):
        patchify(torch.zeros(1, 32, 5, 4))


def test_normalisation_uses_the_constants_per_token_channel():
    shift = torch.tensor(LATENT_SHIFT)
    scale = torch.tensor(LATENT_SCALE)
    tokens = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(2))
    normalised = normalize_latents(tokens)
    assert normalised.dtype == torch.float32
    assert torch.allclose(normalised, (tokens - shift) / scale)
    assert torch.allclose(denormalize_latents(normalised), tokens, atol=1e-6)
    # A VAE latent sitting exactly at the shift decodes from an all-zero DiT output.
    assert torch.allclose(denormalize_latents(torch.zeros(1, 1, 128, dtype=torch.bfloat16))[0, 0], shift)
