"""FLUX.2 VAE: parity with diffusers' AutoencoderKLFlux2 on the same file, tiled decode, the released
layout. Loading paths, config reading and file errors: tests/loading/test_vae.py."""

import pytest
import torch
from diffusers import AutoencoderKLFlux2

from ideogram_app.loading.vae import load_vae
from ideogram_app.model.flux2_vae import Flux2VAE, Flux2VAEConfig


@pytest.fixture(scope="module")
def vae_folder(tiny_vae_folder):
    return tiny_vae_folder


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


def test_default_config_is_the_released_flux2_vae_layout():
    # Key/shape set of diffusers' default AutoencoderKLFlux2 (= FLUX.2-dev's VAE; docs/model-vae-text.md, "VAE"),
    # on meta.
    with torch.device("meta"):
        ours = Flux2VAE(Flux2VAEConfig())
        reference = AutoencoderKLFlux2()
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6) == 84  # ≈ 84 M (docs/model-vae-text.md, "VAE")
