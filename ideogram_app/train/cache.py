"""VAE latents and text features, computed once and reused by every later run (docs/training.md, "Caches").

One safetensors file per entry under `--cache_dir/<kind>/`, named by a hash of everything that
decides its content, so a changed image, caption, size, model file or dtype simply misses:

- latents: image file digest, training size, resize rule, VAE file fingerprint, dtype. The value is
  what inference's img2img path computes (`encode_image`: posterior mean, patchified, normalised),
  fp32, (N_img, 128).
- text: the exact caption string, tokenizer and text-encoder fingerprints, dtype, and either "raw"
  (the 13-tap features, (N_text, 53248) in the compute dtype: a full fine-tune trains the projection)
  or the fingerprint of the DiT's `llm_cond_norm`/`llm_cond_proj` ("projected": (N_text, emb_dim) —
  what inference feeds every step, 11x smaller than raw bf16). Never padded.

Entries are written to a temporary name and renamed, so a killed run leaves no half-written entry.
With several processes each builds its own share of the missing entries (entry i goes to process
i mod world size); entries are keyed by content, so which process wrote one does not matter.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ideogram_app.loading.safetensors_io import resolve_safetensors
from ideogram_app.model.token_layout import LLM_TOKEN_INDICATOR
from ideogram_app.pipeline.conditioning import encode_image, encode_text
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.train.data import Sample, training_pixels

CACHE_VERSION = 1
RESIZE_RULE = "cover-lanczos-centre-crop"
_EDGE_BYTES = 1 << 20


def _digest(*parts: object) -> str:
    return hashlib.blake2b(json.dumps([CACHE_VERSION, *parts], default=str).encode(), digest_size=20).hexdigest()


def files_fingerprint(files: Iterable[Path]) -> str:
    """Cheap content fingerprint of weight files: header (every key, dtype, shape, offset), size, and
    the first and last MiB of data — reading 17 GB of text encoder to name a cache would cost more
    than the cache saves."""
    h = hashlib.blake2b(digest_size=20)
    for file in files:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            h.update(handle.read(header_len))
            h.update(str(size).encode())
            h.update(handle.read(_EDGE_BYTES))
            handle.seek(max(8 + header_len, size - _EDGE_BYTES))
            h.update(handle.read(_EDGE_BYTES))
    return h.hexdigest()


def component_fingerprint(path: Path, subfolder: str) -> str:
    return files_fingerprint(resolve_safetensors(path, subfolder))


def folder_fingerprint(folder: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(file.name.encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def modules_fingerprint(modules: Iterable[nn.Module]) -> str:
    """Hash of every tensor (parameters and buffers, adapters included) of `modules`."""
    h = hashlib.blake2b(digest_size=20)
    for module in modules:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            data = tensor.detach().reshape(-1).contiguous().cpu()
            h.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}".encode())
            h.update(data.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class TextRecipe:
    """What decides a text entry besides the caption."""

    tokenizer: str
    text_encoder: str
    projection: str | None  # fingerprint of the frozen projection, None for raw features
    dtype: torch.dtype

    @property
    def kind(self) -> str:
        return "raw" if self.projection is None else "projected"

    def key(self, caption: str) -> str:
        return _digest("text", caption, self.tokenizer, self.text_encoder, self.projection, str(self.dtype))


def latent_key(sample: Sample, vae: str) -> str:
    return _digest("latents", sample.digest, sample.width, sample.height, RESIZE_RULE, vae)


class FeatureCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).is_file()

    def load(self, kind: str, key: str) -> torch.Tensor:
        path = self.path(kind, key)
        try:
            return load_file(path)["value"]
        except FileNotFoundError:
            raise FileNotFoundError(f"cache entry {path} is missing; build the caches first (--task sft or sft:data_process)") from None

    def save(self, kind: str, key: str, value: torch.Tensor) -> None:
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"value": value.detach().cpu().contiguous()}, temporary)
        os.replace(temporary, path)


def missing_share(entries: dict[str, object], has: Callable[[str], bool], rank: int, world: int) -> list[tuple[str, object]]:
    """This process's share of the entries not cached yet (sorted by key, so every process agrees)."""
    missing = sorted((key, value) for key, value in entries.items() if not has(key))
    return missing[rank::world]


def fill_latents(cache: FeatureCache, todo: list[tuple[str, Sample]], load_vae: Callable[[], nn.Module], plan: MemoryPlan,
                 progress: Callable[[str, int], None]) -> None:
    if not todo:
        return
    vae = load_vae()
    try:
        with torch.no_grad():
            for key, sample in todo:
                cache.save("latents", key, encode_image(vae, training_pixels(sample), plan)[0])
                progress("latents", 1)
    finally:
        del vae
        release_memory()


def fill_text(cache: FeatureCache, recipe: TextRecipe, todo: list[tuple[str, str]], load_text_encoder: Callable[[], nn.Module],
              plan: MemoryPlan, project: Callable[[torch.Tensor], torch.Tensor] | None, progress: Callable[[str, int], None]) -> None:
    if not todo:
        return
    text_encoder = load_text_encoder()
    try:
        with torch.no_grad():
            for key, caption in todo:
                features = encode_text(text_encoder, caption, plan)
                value = project(features) if project is not None else features[0].to(recipe.dtype)
                cache.save("text", key, value)
                progress("text", 1)
    finally:
        del text_encoder
        release_memory()


def projector(dit: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """(1, N, F) fp32 features → (N, emb_dim) projected rows, exactly as inference projects them."""
    def project(features: torch.Tensor) -> torch.Tensor:
        indicator = torch.full(features.shape[:2], LLM_TOKEN_INDICATOR, device=device)
        return dit.project_text(features.to(device), indicator)[0]
    return project


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
