"""`Ideogram4Pipeline`: prompt (caption or text) -> image(s), with the official sampler.

Flow (spec §7.5): validate everything (sizes, strength, sampler settings, caption, token count) before
any model runs -> encode the prompt once -> project the text rows once (`project_text`) and build both
token layouts once -> for each step, conditional DiT on `[text][image]`, unconditional DiT on the
image-only sequence (skipped when g = 1), guided velocity, Euler in t -> de-normalise, unpatchify,
VAE decode. Memory placement is delegated to a `MemoryPlan`.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from PIL import Image

from ideogram_app.caption import Caption
from ideogram_app.model.dit_loading import load_transformer
from ideogram_app.model.latents import TOKEN_CHANNELS, denormalize_latents, normalize_latents, patchify, unpatchify
from ideogram_app.model.prompt_tokenizer import PromptTokenizer, check_token_count
from ideogram_app.model.text_encoder import load_text_encoder
from ideogram_app.model.token_layout import build_token_layout
from ideogram_app.model.vae_loading import load_vae
from ideogram_app.pipeline.memory import FP8_MODES, MemoryPlan, choose_fp8, component_weight_bytes
from ideogram_app.pipeline.metadata import attach_metadata, make_record
from ideogram_app.pipeline.model_config import (
    ComponentPaths,
    ModelConfig,
    components_from_configs,
    components_from_model,
)
from ideogram_app.pipeline.prompt import PreparedPrompt, prepare_prompt
from ideogram_app.pipeline.sampling import (
    SamplerSettings,
    check_denoising_strength,
    euler_step,
    guided_velocity,
    resolve_sampler,
    schedule,
)
from ideogram_app.pipeline.sizes import check_size

log = logging.getLogger(__name__)
_warned_negative_prompt = False


class GenerationCancelled(RuntimeError):
    """The stop event was set; raised between denoising steps."""


@dataclass(frozen=True)
class GenerationRequest:
    """A fully validated run: everything the models need, nothing that still can fail on user input."""

    prompt: PreparedPrompt
    num_text_tokens: int
    width: int
    height: int
    seeds: list[int]
    sampler: SamplerSettings
    times: list[float]
    denoising_strength: float
    input_image: Image.Image | None
    rand_device: torch.device
    warnings: tuple[str, ...] = ()  # unusual but valid choices (size, caption style), for the UI to show


def load_input_image(image: Image.Image | str | os.PathLike, width: int, height: int) -> Image.Image:
    """RGB image scaled to cover width x height, then centre-cropped to exactly that size."""
    if not isinstance(image, Image.Image):
        try:
            image = Image.open(image)
            image.load()
        except FileNotFoundError:
            raise ValueError(f"input_image {os.fspath(image)} does not exist") from None
        except OSError as err:
            raise ValueError(f"input_image {os.fspath(image)} is not an image Pillow can read ({err})") from None
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float32 in [-1, 1]."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(image.height, image.width, 3)
    return data.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    data = ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(row.numpy(), "RGB") for row in data]


class Ideogram4Pipeline:
    def __init__(
        self,
        transformer: torch.nn.Module,
        text_encoder,
        tokenizer: PromptTokenizer,
        vae: torch.nn.Module,
        unconditional_transformer: torch.nn.Module | None = None,
        memory: MemoryPlan | None = None,
        model_name: str = "",
    ):
        self.transformer = transformer
        self.unconditional_transformer = unconditional_transformer
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.memory = memory or MemoryPlan.create("cpu")
        self.model_name = model_name
        self._encoded: tuple[str, torch.Tensor] | None = None  # last prompt and its features (on the CPU)

    # ----- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        *,
        torch_dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        model_configs: list[ModelConfig] | None = None,
        tokenizer_config: ModelConfig | None = None,
        memory: str = "full",
        fp8: str = "auto",
        source: str | None = None,
    ) -> "Ideogram4Pipeline":
        """Load from a repo id / local folder (`model`), or DiffSynth-style `model_configs`.

        `memory` is "full" (all on `device`), "offload" (components visit `device` only while they run)
        or "cpu". `fp8="keep"` stores fp8 checkpoints as fp8 (half the memory); "dequantize" widens
        them once at load (faster steps); "auto" dequantises only in `full` mode on a GPU with room for
        it. `source` picks "huggingface" (default) or "modelscope".
        """
        if (model is None) == (model_configs is None):
            raise ValueError("pass either a model id/folder or model_configs=[ModelConfig(...), ...]")
        if model is not None:
            paths = components_from_model(model, source=source)
            name = os.fspath(model)
        else:
            paths = components_from_configs(model_configs, tokenizer_config)
            name = paths.names.get("transformer", "")
        return cls.from_components(paths, torch_dtype=torch_dtype, device=device, memory=memory, fp8=fp8, model_name=name)

    @classmethod
    def from_components(
        cls,
        paths: ComponentPaths,
        *,
        torch_dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        memory: str = "full",
        fp8: str = "auto",
        model_name: str = "",
    ) -> "Ideogram4Pipeline":
        plan = MemoryPlan.create(memory, device)
        if fp8 not in FP8_MODES:
            raise ValueError(f"fp8 mode {fp8!r} is unknown; choose one of {', '.join(FP8_MODES)}")
        if fp8 == "auto":
            fp8 = choose_fp8(plan, sum(
                component_weight_bytes(path, role, "dequantize", torch_dtype)
                for role, path in paths.weights().items()
            ))
        where = plan.storage_device
        transformer = load_transformer(paths.transformer, device=where, dtype=torch_dtype, fp8=fp8)
        unconditional = None
        if paths.unconditional_transformer is None:
            warnings.warn(
                "no unconditional_transformer: the conditional DiT will also serve the unconditional pass, "
                "which is not the trained configuration (images will differ from the official pipeline)",
                stacklevel=3,
            )
        else:
            unconditional = load_transformer(
                paths.unconditional_transformer, device=where, dtype=torch_dtype, fp8=fp8,
                subfolder="unconditional_transformer",
            )
        text_encoder = load_text_encoder(
            paths.text_encoder, device=where, dtype=torch_dtype, fp8=fp8, tokenizer_path=paths.tokenizer
        )
        vae = load_vae(paths.vae, device=where, dtype=torch_dtype)
        for module in (transformer, unconditional, text_encoder, vae):
            if module is not None:
                plan.place(module)
        return cls(transformer, text_encoder, text_encoder.tokenizer, vae, unconditional, plan, model_name)

    # ----- validation (no model work) ------------------------------------------------------------
    def prepare(
        self,
        prompt: str | dict | Caption,
        negative_prompt: str = "",
        cfg_scale: float | None = None,
        input_image: Image.Image | str | os.PathLike | None = None,
        denoising_strength: float = 1.0,
        height: int = 1024,
        width: int = 1024,
        seed: int | None = None,
        rand_device: str | torch.device = "cpu",
        num_inference_steps: int | None = None,
        preset: str = "quality",
        guidance_schedule: list[float] | None = None,
        mu: float | None = None,
        std: float | None = None,
        num_images: int = 1,
    ) -> GenerationRequest:
        """Check every argument and return the run it describes; raises before any model work."""
        global _warned_negative_prompt
        if negative_prompt and not _warned_negative_prompt:
            _warned_negative_prompt = True
            warnings.warn(
                "negative_prompt is ignored: Ideogram 4 has no negative prompt (its unconditional model never "
                "sees text); it is accepted only for DiffSynth compatibility",
                stacklevel=3,
            )
        notes = check_size(width, height)
        for message in notes:
            log.warning("%s", message)
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        denoising_strength = check_denoising_strength(denoising_strength)
        if denoising_strength < 1.0 and input_image is None:
            raise ValueError(f"denoising_strength {denoising_strength} needs an input_image to start from")
        if seed is None:
            seed = secrets.randbelow(2**31)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**63 - 1 - num_images:
            raise ValueError(f"seed must be a non-negative integer below 2**63 - num_images, got {seed!r}")
        try:
            rand_device = torch.device(rand_device)
        except (RuntimeError, TypeError):
            raise ValueError(f"rand_device {rand_device!r} is not a torch device name like 'cpu' or 'cuda'") from None
        if rand_device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("rand_device 'cuda' needs a CUDA GPU; use rand_device='cpu'")
        sampler = resolve_sampler(preset, num_inference_steps, cfg_scale, guidance_schedule, mu, std)
        image = None
        if input_image is not None:
            if denoising_strength == 1.0:
                warnings.warn("input_image is ignored at denoising_strength=1.0 (pure text-to-image)", stacklevel=3)
            else:
                image = load_input_image(input_image, width, height)
        prepared = prepare_prompt(prompt)
        num_tokens = self.tokenizer.count(prepared.text)
        check_token_count(num_tokens)
        times = schedule(sampler.steps, height, width, sampler.mu, sampler.std, denoising_strength)
        return GenerationRequest(
            prompt=prepared,
            num_text_tokens=num_tokens,
            width=width,
            height=height,
            seeds=[seed + i for i in range(num_images)],
            sampler=sampler,
            times=times,
            denoising_strength=denoising_strength,
            input_image=image,
            rand_device=rand_device,
            warnings=tuple(notes) + tuple(str(issue) for issue in prepared.warnings),
        )

    # ----- generation ------------------------------------------------------------------------------
    def __call__(
        self,
        prompt: str | dict | Caption,
        negative_prompt: str = "",
        cfg_scale: float | None = None,
        input_image: Image.Image | str | os.PathLike | None = None,
        denoising_strength: float = 1.0,
        height: int = 1024,
        width: int = 1024,
        seed: int | None = None,
        rand_device: str | torch.device = "cpu",
        num_inference_steps: int | None = None,
        preset: str = "quality",
        guidance_schedule: list[float] | None = None,
        mu: float | None = None,
        std: float | None = None,
        num_images: int = 1,
        callback: Callable[[int, int], None] | None = None,
        stop_event: threading.Event | None = None,
        output_type: Literal["pil", "latent"] = "pil",
    ):
        """Generate. Returns one PIL image (num_images=1) or a list, each carrying its metadata in
        `image.info` (see metadata.py); `output_type="latent"` returns the final normalised latent
        tokens (B, N_img, 128) instead. `callback(step, total)` runs after every step; a set
        `stop_event` raises GenerationCancelled before the next one."""
        request = self.prepare(
            prompt, negative_prompt, cfg_scale, input_image, denoising_strength, height, width, seed,
            rand_device, num_inference_steps, preset, guidance_schedule, mu, std, num_images,
        )
        return self.run(request, callback=callback, stop_event=stop_event, output_type=output_type)

    @torch.inference_mode()
    def run(
        self,
        request: GenerationRequest,
        callback: Callable[[int, int], None] | None = None,
        stop_event: threading.Event | None = None,
        output_type: Literal["pil", "latent"] = "pil",
    ):
        """Execute a validated request (see `prepare`)."""
        if output_type not in ("pil", "latent"):
            raise ValueError(f"output_type must be 'pil' or 'latent', got {output_type!r}")
        device = self.memory.device
        batch = len(request.seeds)
        grid_h, grid_w = request.height // 16, request.width // 16
        n_text = request.num_text_tokens

        features = self.encode_prompt(request.prompt.text)
        if features.shape[1] != n_text:
            raise RuntimeError(f"text encoder returned {features.shape[1]} tokens, the tokenizer counted {n_text}")

        # Step-independent work, done once: layouts, their RoPE tables and masks, projected text rows,
        # timestep tensors, and the conditional input whose text rows stay zero.
        unconditional = self.unconditional_transformer or self.transformer
        cond_layout = [x.to(device) for x in build_token_layout(n_text, grid_h, grid_w, batch)]
        uncond_layout = [x.to(device) for x in build_token_layout(0, grid_h, grid_w, batch)]
        cond_positions = self.transformer.prepare_positions(cond_layout[0], cond_layout[1])
        uncond_positions = unconditional.prepare_positions(uncond_layout[0], uncond_layout[1])
        with self.memory.running(self.transformer):
            text_hidden = self.transformer.project_text(features.to(device), cond_layout[2][:1, :n_text])
        text_hidden = text_hidden.expand(batch, -1, -1)
        t_batches = torch.tensor(request.times, dtype=torch.float32, device=device)[:, None].expand(-1, batch)

        z = self._initial_latents(request, grid_h, grid_w).to(device)
        cond_input = torch.zeros(batch, n_text + z.shape[1], TOKEN_CHANNELS, device=device)
        times, guidance = request.times, request.sampler.guidance
        for step in range(request.sampler.steps):
            if stop_event is not None and stop_event.is_set():
                raise GenerationCancelled(f"generation stopped after {step} of {request.sampler.steps} steps")
            t, t_next, g = times[step], times[step + 1], guidance[step]
            cond_input[:, n_text:] = z
            with self.memory.running(self.transformer):
                out = self.transformer(
                    cond_input, t_batches[step], None, *cond_layout, text_hidden=text_hidden, positions=cond_positions
                )
            v_cond = out[:, n_text:]
            v_uncond = None
            if g != 1.0:
                with self.memory.running(unconditional):
                    v_uncond = unconditional(z, t_batches[step], None, *uncond_layout, positions=uncond_positions)
            z = euler_step(z, guided_velocity(v_cond, v_uncond, g), t, t_next)
            if callback is not None:
                callback(step + 1, request.sampler.steps)
        if stop_event is not None and stop_event.is_set():
            raise GenerationCancelled("generation stopped before decoding")
        if output_type == "latent":
            return z
        with self.memory.running(self.vae):
            latent = unpatchify(denormalize_latents(z), grid_h, grid_w)
            pixels = self.vae.decode(latent.to(self.vae.dtype))
        images = [attach_metadata(image, self._record(request, i)) for i, image in enumerate(tensor_to_images(pixels))]
        return images[0] if batch == 1 else images

    def encode_prompt(self, text: str) -> torch.Tensor:
        """Text features (1, N, F) fp32; the encoder runs once per distinct prompt (last one cached)."""
        if self._encoded is None or self._encoded[0] != text:
            with self.memory.running(self.text_encoder):
                features = self.text_encoder.encode(text).float().cpu()
            self._encoded = (text, features)
        return self._encoded[1]

    def _initial_latents(self, request: GenerationRequest, grid_h: int, grid_w: int) -> torch.Tensor:
        """Seeded noise per image (seed, seed+1, ...), mixed with the encoded input image for img2img."""
        noise = torch.cat([
            torch.randn(
                (1, grid_h * grid_w, TOKEN_CHANNELS), dtype=torch.float32, device=request.rand_device,
                generator=torch.Generator(request.rand_device).manual_seed(seed),
            )
            for seed in request.seeds
        ])
        if request.input_image is None:
            return noise
        with self.memory.running(self.vae):
            pixels = image_to_tensor(request.input_image).to(self.memory.device)
            clean = normalize_latents(patchify(self.vae.encode(pixels.to(self.vae.dtype)).float()))
        t0 = request.times[0]  # = 1 - sigma0: the input is noised to the start level of the schedule
        return t0 * clean.to(noise.device) + (1.0 - t0) * noise

    def _record(self, request: GenerationRequest, index: int) -> dict:
        s = request.sampler
        settings = {
            "model": self.model_name,
            "preset": s.preset,
            "steps": s.steps,
            "guidance": list(s.guidance),
            "mu": s.mu,
            "std": s.std,
            "width": request.width,
            "height": request.height,
            "seed": request.seeds[index],
            "denoising_strength": request.denoising_strength,
            "img2img": request.input_image is not None,
        }
        return make_record(request.prompt.text, request.prompt.kind, settings)
