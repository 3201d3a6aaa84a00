"""Load the FLUX.2 VAE of an Ideogram 4 repo straight from its diffusers-layout safetensors file.

Every published VAE uses diffusers' `AutoencoderKLFlux2` key names, which `Flux2VAE` mirrors name
for name (docs/model-vae-text.md), so the stored keys are the model keys and the load is strict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ideogram_app.loading.config import dataclass_from_config, read_config
from ideogram_app.loading.safetensors_io import describe_files, read_headers, resolve_safetensors
from ideogram_app.loading.streaming import Target, assign_state_dict, stream_state_dict
from ideogram_app.model.flux2_vae import Flux2VAE, Flux2VAEConfig

# The block types and activation `Flux2VAE` implements, as diffusers names them in config.json.
_BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}


def vae_config_from_dict(raw: Mapping[str, Any], source: str = "config.json") -> Flux2VAEConfig:
    """Build from a diffusers `vae/config.json`; rejects block types `Flux2VAE` does not implement."""
    for key, expected in _BLOCK_TYPES.items():
        unsupported = [t for t in raw.get(key, ()) if t != expected]
        if unsupported:
            raise ValueError(f"{source}: {key} has {unsupported[0]!r}; only {expected!r} is supported")
    if raw.get("act_fn", "silu") != "silu":
        raise ValueError(f"{source}: act_fn is {raw['act_fn']!r}; the FLUX.2 VAE uses 'silu'")
    config = dataclass_from_config(Flux2VAEConfig, raw)
    levels = len(config.block_out_channels)
    for key in _BLOCK_TYPES:
        if key in raw and len(raw[key]) != levels:
            raise ValueError(f"{source}: {key} has {len(raw[key])} entries but block_out_channels has {levels}")
    return config


def _read_config(config: str | Path | dict[str, Any] | None, weights_folder: Path) -> Flux2VAEConfig:
    """Explicit config (dict or file) > `config.json` beside the weights > the released VAE's config."""
    if isinstance(config, dict):
        return vae_config_from_dict(config, source="config argument")
    config_file = Path(config) if config is not None else weights_folder / "config.json"

    def missing() -> Flux2VAEConfig:
        if config is not None:
            raise FileNotFoundError(f"{config_file}: VAE config file not found")
        return Flux2VAEConfig()

    return read_config(config_file, vae_config_from_dict, missing)


def load_vae(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    config: str | Path | dict[str, Any] | None = None,
) -> Flux2VAE:
    """Build a `Flux2VAE` on the meta device and stream the weights in at `dtype` on `device`.

    `path` is a repo folder (its `vae/` is used), the `vae/` folder itself, or a `.safetensors`
    file; the config comes from `config`, else the `config.json` beside the weights.
    """
    files = resolve_safetensors(path, subfolder="vae")
    with torch.device("meta"):
        vae = Flux2VAE(_read_config(config, files[0].parent))
    header = read_headers(files)
    state = stream_state_dict(header, {key: Target(key) for key in header}, torch.device(device), dtype)
    assign_state_dict(vae, state, where=describe_files(files))
    return vae.eval().requires_grad_(False)
