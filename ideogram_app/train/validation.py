"""Validation samples during training, made with the inference pipeline's own functions.

The real asymmetric CFG: the conditional DiT carries the LoRA being trained (or is the model being
fine-tuned); the unconditional DiT is the base model's, untouched. Text rows come from the feature
cache (built with the training captions), so neither the text encoder nor anything else is reloaded;
the unconditional DiT and the VAE are loaded once, wait in host memory between validations and visit
the device only while samples are made. Images go to `validation/step-NNNNNNN/NN.png` in the run
folder with the prompt and settings in their metadata, as generated images carry them.

Prompts file: `.txt` (one prompt per line), `.json` (a list) or `.jsonl` (one JSON value per line);
an entry is a prompt (caption object or text) or `{"prompt": ..., "width": ..., "height": ...,
"seed": ...}`.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ideogram_app.pipeline.conditioning import Conditioning, decode_tokens, initial_noise, prepare_conditioning, token_layout
from ideogram_app.pipeline.images import tensor_to_images
from ideogram_app.pipeline.metadata import attach_metadata, make_record, save_png
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.pipeline.sampling import denoise
from ideogram_app.pipeline.settings import GenerationSettings, SettingsError
from ideogram_app.pipeline.sizes import token_grid
from ideogram_app.pipeline.velocity import dit_pair_velocity
from ideogram_app.train.data import DataError, prepare_caption

SIZE_KEYS = ("width", "height", "seed")


@dataclass(frozen=True)
class ValidationPrompt:
    label: str
    caption: str
    kind: str
    settings: GenerationSettings


def _entries(path: Path) -> list[tuple[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError([f"{path.name}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"]) from None
        if not isinstance(data, list):
            raise DataError([f"{path.name}: must be a JSON list of prompts"])
        return [(f"{path.name} entry {i + 1}", item) for i, item in enumerate(data)]
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                entries.append((f"{path.name} line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError([f"{path.name} line {number}: invalid JSON at column {err.colno}: {err.msg}"]) from None
        else:
            entries.append((f"{path.name} line {number}", line.strip()))
    return entries


def read_validation_prompts(path: str | Path, preset: str, width: int | None, height: int | None, seed: int) -> list[ValidationPrompt]:
    """Every prompt checked (caption verifier, sizes, preset) before any model loads."""
    path = Path(path)
    prompts, problems = [], []
    for label, entry in _entries(path):
        values = {"width": width or 1024, "height": height or 1024, "seed": seed}
        if isinstance(entry, dict) and "prompt" in entry:
            extra = sorted(set(entry) - {"prompt", *SIZE_KEYS})
            if extra:
                problems.append(f"{label}: unknown field(s) {', '.join(extra)} (allowed: prompt, {', '.join(SIZE_KEYS)})")
                continue
            values |= {k: entry[k] for k in SIZE_KEYS if k in entry}
            entry = entry["prompt"]
        try:
            caption, kind = prepare_caption(entry)
            settings = GenerationSettings(preset=preset, **values)
        except SettingsError as err:
            problems.append(f"{label}: " + "; ".join(message for _, message in err.problems))
            continue
        except ValueError as err:
            problems.append(f"{label}: {err}")
            continue
        prompts.append(ValidationPrompt(label, caption, kind, settings))
    if not prompts and not problems:
        problems.append(f"{path.name}: has no prompts")
    if problems:
        raise DataError([f"--validation_prompts {p}" for p in problems])
    return prompts


class Validator:
    """Makes the samples of one step; the unconditional DiT and the VAE are loaded on first use."""

    def __init__(self, run, prompts: list[ValidationPrompt], load_unconditional, load_vae):
        self.run = run
        self.prompts = prompts
        self._load_unconditional = load_unconditional
        self._load_vae = load_vae
        self.unconditional = None
        self.vae = None
        device = run.accelerator.device
        # Waiting components live in (pinned) host RAM on a GPU machine; on the CPU everything is local.
        self.plan = MemoryPlan.create("offload" if device.type == "cuda" else "cpu", device)
        self.resident = MemoryPlan.create("full", device) if device.type == "cuda" else self.plan

    def _components(self):
        if self.vae is None:
            self.unconditional = self._load_unconditional()
            if self.unconditional is None:
                warnings.warn("the model has no unconditional_transformer: validation samples use the trained DiT for the "
                              "unconditional pass too, which is not how the model is used", stacklevel=3)
            else:
                self.plan.place(self.unconditional)
            self.vae = self.plan.place(self._load_vae())
        return self.unconditional or self.run.dit, self.vae

    @torch.inference_mode()
    def sample(self, step: int) -> list[Path]:
        run = self.run
        dit = run.dit
        unconditional, vae = self._components()
        folder = Path(run.output) / "validation" / f"step-{step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        device = run.accelerator.device
        paths = []
        with self.plan.running(unconditional), self.plan.running(vae):
            for index, prompt in enumerate(self.prompts):
                s = prompt.settings
                grid_h, grid_w = token_grid(s.width, s.height)
                text = run.cache.load("text", run.text_recipe.key(prompt.caption))[None]
                if run.text_recipe.projection is not None:
                    n_text = text.shape[1]
                    conditioning = Conditioning(
                        n_text, text.to(device, dit.compute_dtype), token_layout(dit, n_text, grid_h, grid_w, 1, device),
                        token_layout(unconditional, 0, grid_h, grid_w, 1, device),
                    )
                else:
                    conditioning = prepare_conditioning(dit, unconditional, text.float(), grid_h, grid_w, 1, self.resident)
                z = initial_noise(s.seeds, grid_h, grid_w, torch.device("cpu")).to(device)
                z = denoise(dit_pair_velocity(dit, unconditional, conditioning, self.resident), z, s.times, s.sampler.guidance)
                image = tensor_to_images(decode_tokens(vae, z, grid_h, grid_w, self.resident))[0]
                record = make_record(prompt.caption, prompt.kind, {
                    "model": run.model_name, "training_step": step, "preset": s.sampler.preset, "steps": s.sampler.steps,
                    "guidance": list(s.sampler.guidance), "mu": s.sampler.mu, "std": s.sampler.std,
                    "width": s.width, "height": s.height, "seed": s.seed,
                })
                paths.append(save_png(attach_metadata(image, record), folder / f"{index:02d}.png"))
        return paths
