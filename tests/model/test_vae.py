"""FLUX.2 VAE: parity with diffusers' AutoencoderKLFlux2 on the same file, tiled decode, the released
layout. Loading paths, config reading and file errors: tests/loading/test_vae.py."""

import pytest
import torch
from diffusers import AutoencoderKLFlux2

from ideogram_app.loading.vae import load_vae
from ideogram_app.model.flux2_vae import Flux2VAE, Flux2VAEConfig
from tests.fixtures.tiny_vae import write_tiny_vae


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    return write_tiny_vae(tmp_path_factory.mktemp("repo"), seed=3)


@pytest.fixture(scope="module")
def ours(vae_folder):
    return load_vae(vae_folder.parent, dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(vae_folder):
    return AutoencoderKLFlux2.from_pretrained(vae_folder, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def latent():
    return torch.randn(1, 32, 12, 20, generator=torch.Generator().manual_seed(7))


def test_encode_matches_diffusers_posterior_mean(ours, reference):
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean = ours.encode(images)
        expected = reference.encode(images).latent_dist.mean
    assert mean.shape == (2, 32, 8, 12)
    assert expected.abs().max() > 0.1  # a real signal, not a degenerate all-zero comparison
    assert (mean - expected).abs().max() <= 1e-5


def test_decode_matches_diffusers(ours, reference, latent):
    with torch.no_grad():
        images = ours.decode(latent)
        expected = reference.decode(latent).sample
    assert images.shape == (1, 3, 96, 160)
    assert expected.abs().max() > 0.1
    assert (images - expected).abs().max() <= 1e-5


def test_tiled_decode_with_one_tile_is_the_plain_decode(ours, latent):
    with torch.no_grad():
        assert torch.equal(ours.decode_tiled(latent, tile_size=32, overlap=4), ours.decode(latent))


def test_tiled_decode_blending_is_exact_when_every_tile_sees_the_whole_latent(ours):
    # margin >= latent size: each tile's context is the full latent, so only cropping + blending
    # arithmetic remains; it must reproduce decode to float rounding (2 x 3 = 6 tiles here).
    z = torch.randn(1, 32, 10, 14, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        tiled = ours.decode_tiled(z, tile_size=8, overlap=3, margin=16)
        assert (tiled - ours.decode(z)).abs().max() <= 1e-5


def test_tiled_decode_close_to_untiled_at_working_settings(ours):
    z = torch.randn(1, 32, 20, 28, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        full = ours.decode(z)
        tiled = ours.decode_tiled(z, tile_size=12, overlap=4, margin=12)
        no_context = ours.decode_tiled(z, tile_size=12, overlap=4, margin=0)
    error = (tiled - full).abs()
    # Measured: max 0.152, mean 0.0086 on outputs of amplitude 3.05 (per-tile GroupNorm statistics);
    # without the context margin the mean error is 0.058.
    assert error.max() <= 0.2 and error.mean() <= 0.012
    assert (no_context - full).abs().mean() > 4 * error.mean()  # the context margin is what makes it close


def test_default_config_is_the_released_flux2_vae_layout():
    # Key/shape set of diffusers' default AutoencoderKLFlux2 (= FLUX.2-dev's VAE; docs/model-vae-text.md, "VAE"),
    # on meta.
    with torch.device("meta"):
        ours = Flux2VAE(Flux2VAEConfig())
        reference = AutoencoderKLFlux2()
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6) == 84  # ≈ 84 M (docs/model-vae-text.md, "VAE")
