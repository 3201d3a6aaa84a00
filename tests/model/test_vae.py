"""FLUX.2 VAE: parity with diffusers' AutoencoderKLFlux2 on the same file, loading paths, tiled decode."""

import json

import pytest
import torch
from diffusers import AutoencoderKLFlux2
from safetensors.torch import load_file, save_file

from ideogram_app.model.flux2_vae import Flux2VAE, Flux2VAEConfig
from ideogram_app.model.vae_loading import load_vae
from tests.fixtures.tiny_vae import TINY_VAE_CONFIG, tiny_vae_state_dict, write_tiny_vae


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


def test_checkpoint_loads_key_for_key_including_unused_bn(vae_folder, ours):
    stored = load_file(str(vae_folder / "diffusion_pytorch_model.safetensors"))
    state = ours.state_dict()
    assert set(state) == set(stored)
    for name in ("bn.running_mean", "decoder.up_blocks.2.resnets.0.conv_shortcut.weight", "quant_conv.weight"):
        assert torch.equal(state[name], stored[name].float())


def test_component_folder_and_file_with_config_load_the_same_weights(vae_folder, ours, latent):
    from_folder = load_vae(vae_folder, dtype=torch.float32)
    from_file = load_vae(
        vae_folder / "diffusion_pytorch_model.safetensors", dtype=torch.float32, config=TINY_VAE_CONFIG
    )
    with torch.no_grad():
        expected = ours.decode(latent)
        assert torch.equal(from_folder.decode(latent), expected)
        assert torch.equal(from_file.decode(latent), expected)


def test_loads_in_the_requested_dtype(vae_folder):
    vae = load_vae(vae_folder, dtype=torch.bfloat16)
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in vae.parameters())
    assert vae.bn.num_batches_tracked.dtype == torch.int64


def test_config_is_read_from_config_json(tmp_path):
    # Same key set as the tiny weights, half the widths: only a loader that reads config.json fails.
    config = dict(TINY_VAE_CONFIG, block_out_channels=[8, 8, 16, 16], norm_num_groups=4)
    folder = tmp_path / "vae"
    folder.mkdir()
    save_file(tiny_vae_state_dict(), str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'decoder\.conv_in\.bias' has shape \(32,\), model expects \(16,\)"):
        load_vae(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    state = load_file(str(write_tiny_vae(tmp_path / "src") / "diffusion_pytorch_model.safetensors"))
    del state["decoder.conv_out.bias"]
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    with pytest.raises(ValueError, match=r"missing keys \['decoder\.conv_out\.bias'\]"):
        load_vae(broken, config=TINY_VAE_CONFIG)


def test_unsupported_block_type_is_rejected_with_the_file(tmp_path):
    raw = dict(TINY_VAE_CONFIG, up_block_types=["UpDecoderBlock2D"] * 3 + ["AttnUpDecoderBlock2D"])
    with pytest.raises(ValueError, match=r"cfg\.json: up_block_types has 'AttnUpDecoderBlock2D'"):
        Flux2VAEConfig.from_dict(raw, source="cfg.json")


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
