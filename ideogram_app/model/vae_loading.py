"""Load the FLUX.2 VAE of an Ideogram 4 repo straight from its diffusers-layout safetensors file."""

import json
from pathlib import Path
from typing import Any

import torch

from ideogram_app.model.flux2_vae import Flux2VAE, Flux2VAEConfig
from ideogram_app.model.safetensors_io import assign_state_dict, read_headers, iter_tensors, resolve_safetensors


def _read_config(config: str | Path | dict[str, Any] | None, weights_folder: Path) -> Flux2VAEConfig:
    """Explicit config (dict or file) > `config.json` beside the weights > the released VAE's config."""
    if isinstance(config, dict):
        return Flux2VAEConfig.from_dict(config, source="config argument")
    config_file = Path(config) if config is not None else weights_folder / "config.json"
    if not config_file.is_file():
        if config is not None:
            raise FileNotFoundError(f"{config_file}: VAE config file not found")
        return Flux2VAEConfig()
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file}: not valid JSON ({exc})") from None
    return Flux2VAEConfig.from_dict(raw, source=str(config_file))


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
    vae_config = _read_config(config, files[0].parent)
    with torch.device("meta"):
        vae = Flux2VAE(vae_config)
    state = {
        name: tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        for name, tensor in iter_tensors(read_headers(files))
    }
    assign_state_dict(vae, state, where=str(files[0]))
    return vae.eval().requires_grad_(False)
