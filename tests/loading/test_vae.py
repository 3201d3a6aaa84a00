"""load_vae on real files: repo, folder and file paths, config from config.json or an argument,
the requested dtype, every stored tensor (the unused `bn` included), and precise errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ideogram_app.loading.vae import load_vae, vae_config_from_dict
from tests.fixtures.tiny_vae import TINY_VAE_CONFIG, tiny_vae_state_dict, write_tiny_vae


@pytest.fixture(scope="module")
def vae_folder(tiny_vae_folder):
    return tiny_vae_folder


@pytest.fixture(scope="module")
def ours(vae_folder):
    return load_vae(vae_folder.parent, dtype=torch.float32)


@pytest.fixture(scope="module")
def latent():
    return torch.randn(1, 32, 12, 20, generator=torch.Generator().manual_seed(7))


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
        vae_config_from_dict(raw, source="cfg.json")


def test_config_file_errors_name_the_file(vae_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json: VAE config file not found"):
        load_vae(vae_folder, config=tmp_path / "nowhere.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_vae(vae_folder, config=tmp_path / "bad.json")
