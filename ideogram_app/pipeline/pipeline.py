"""`Ideogram4Pipeline`: prompt (caption or text) -> image(s), composed from plain functions.

Read top-down, a generation is:
1. `prepare`: `GenerationSettings` checks every setting (settings.py); the prompt is canonicalised and
   its tokens counted (prompt.py); the img2img image is decoded under the limits (images.py). Nothing
   has touched a model yet, so every user error surfaces here.
2. `run`: text features (cached per prompt) -> `prepare_conditioning` (conditioning.py) -> seeded noise,
   mixed with the encoded input image for img2img -> `denoise` (sampling.py) over the guided velocity
   of the two DiTs (velocity.py) -> `decode_tokens` -> PNG metadata (metadata.py).
Where each module computes is the `MemoryPlan`'s business (placement.py).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import warnings
from dataclasses import dataclass, fields
from typing import Callable, Literal, Sequence

import torch
from PIL import Image

from ideogram_app.caption import Caption
from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.loading.conversion import FP8_MODES
from ideogram_app.loading.dit import load_transformer
from ideogram_app.loading.text_encoder import load_text_encoder
from ideogram_app.loading.vae import load_vae
from ideogram_app.lora import LoraReport, apply_lora, loaded, remove, set_scale
from ideogram_app.lora.identity import file_sha256
from ideogram_app.model.prompt_tokenizer import PromptTokenizer, check_token_count
from ideogram_app.pipeline.conditioning import (
    Conditioning, decode_tokens, encode_image, encode_text, initial_noise, noised_start, prepare_conditioning,
)
from ideogram_app.pipeline.estimate import choose_fp8, component_weight_bytes
from ideogram_app.pipeline.images import fit_image, image_to_tensor, open_image, tensor_to_images
from ideogram_app.pipeline.metadata import attach_metadata, make_record
from ideogram_app.pipeline.model_config import ComponentPaths, ModelConfig, components_from_configs, components_from_model
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.pipeline.preview import Preview, PreviewHook, projection_for
from ideogram_app.pipeline.prompt import PreparedPrompt, prepare_prompt
from ideogram_app.pipeline.region import keep_outside, paste_outside, region_mask
from ideogram_app.pipeline.sampling import AfterStep, GenerationCancelled, denoise
from ideogram_app.pipeline.settings import GenerationSettings
from ideogram_app.pipeline.sizes import token_grid
from ideogram_app.speed import apply_speed_mode, check_speed_mode, default_speed_mode
from ideogram_app.speed.cfg_parallel import cfg_velocity, parse_devices, place_for_cfg_parallel

log = logging.getLogger(__name__)
_warned_negative_prompt = False
SETTING_NAMES = tuple(f.name for f in fields(GenerationSettings) if f.init and f.name != "limits")

__all__ = ["GenerationCancelled", "GenerationRequest", "Ideogram4Pipeline"]


@dataclass(frozen=True)
class RunStart:
    """What `Ideogram4Pipeline.start` hands the denoising loop, and what `finish` needs after it."""

    conditioning: Conditioning
    z: torch.Tensor  # starting latents, on the compute device
    after_step: AfterStep | None  # `denoise`'s hook: region edit and/or live preview
    grid: tuple[int, int]  # latent tokens (high, wide)
    region: torch.Tensor | None  # an edited region's pixel mask, for pasting the input back outside it


@dataclass(frozen=True)
class GenerationRequest:
    """A fully validated run: everything the models need, nothing that still can fail on user input."""

    settings: GenerationSettings
    prompt: PreparedPrompt
    num_text_tokens: int
    input_image: Image.Image | None  # decoded and fitted to the size; None for text-to-image
    rand_device: torch.device
    warnings: tuple[str, ...] = ()  # unusual but valid choices (size, caption style), for the UI to show


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
        limits: Limits = DEFAULT_LIMITS,
    ):
        self.transformer = transformer
        self.unconditional_transformer = unconditional_transformer
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.memory = memory or MemoryPlan.create("cpu")
        self.model_name = model_name
        self.limits = limits
        self._encoded: tuple[str, torch.Tensor] | None = None  # last prompt and its features (on the CPU)
        self._lora_files: dict[str, tuple[str, str]] = {}  # LoRA name -> (target, sha256 of its file)
        self.mode = "eager"  # the speed mode the DiTs run in (set_mode)
        self.devices: tuple[torch.device, ...] = (self.memory.device,)  # two: CFG-parallel (use_devices)

    # DiffSynth's names for the two DiTs, so `pipe.load_lora(pipe.dit, path)` works as there.
    @property
    def dit(self) -> torch.nn.Module:
        return self.transformer

    @property
    def dit_uncond(self) -> torch.nn.Module:
        return self.unconditional_transformer or self.transformer

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
        unconditional: str = "dit",
        mode: str | None = None,
        compile_cache: str | os.PathLike | None = None,
        devices: str | Sequence[str | torch.device] | None = None,
    ) -> "Ideogram4Pipeline":
        """Load from a repo id / local folder (`model`), or DiffSynth-style `model_configs`.

        `unconditional="lora"` leaves the unconditional DiT on disk (one 9 B model resident instead of
        two): the conditional DiT then also runs the unconditional pass, with an "unconditional LoRA"
        (`load_lora(path, target="unconditional_lora")`) switched on for that pass only. That LoRA
        approximates the unconditional model; images differ from the official two-model pipeline.

        `memory` is "full" (all on `device`), "offload" (components visit `device` only while they run)
        or "cpu". `fp8="keep"` stores fp8 checkpoints as fp8 (half the memory); "dequantize" widens
        them once at load (faster steps); "auto" dequantises only in `full` mode on a GPU with room for
        it. `source` picks "huggingface" (default) or "modelscope".

        `mode` is the speed mode (ideogram_app/speed): "eager", "exact" (compiled; the default on CUDA)
        or "fast" (FP8 GEMMs; keeps fp8 checkpoints fp8 under `fp8="auto"`); `compile_cache` is a
        folder that keeps compiled kernels across restarts. `devices="cuda:0,cuda:1"` runs CFG-parallel
        (the unconditional DiT on the second GPU, every step's two passes at once; docs/speed.md);
        "auto" takes two GPUs when there are two and one otherwise.
        """
        if (model is None) == (model_configs is None):
            raise ValueError("pass either a model id/folder or model_configs=[ModelConfig(...), ...]")
        if mode is not None:
            check_speed_mode(mode)
        if devices is not None:
            parse_devices(devices)
        if model is not None:
            paths = components_from_model(model, source=source)
            name = os.fspath(model)
        else:
            paths = components_from_configs(model_configs, tokenizer_config)
            name = paths.names.get("transformer", "")
        if unconditional not in ("dit", "lora"):
            raise ValueError(f"unconditional must be 'dit' (load the unconditional transformer) or 'lora', got {unconditional!r}")
        if unconditional == "lora":
            paths = dataclasses.replace(paths, unconditional_transformer=None)
        return cls.from_components(paths, torch_dtype=torch_dtype, device=device, memory=memory, fp8=fp8,
                                   model_name=name, warn_single_dit=unconditional == "dit", mode=mode,
                                   compile_cache=compile_cache, devices=devices)

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
        warn_single_dit: bool = True,
        mode: str | None = None,
        compile_cache: str | os.PathLike | None = None,
        devices: str | Sequence[str | torch.device] | None = None,
    ) -> "Ideogram4Pipeline":
        where_each = _devices_for(devices, memory, paths)
        plan = MemoryPlan.create(memory, where_each[0] if where_each else device)
        mode = check_speed_mode(mode or default_speed_mode(plan.device))
        if fp8 not in FP8_MODES:
            raise ValueError(f"fp8 mode {fp8!r} is unknown; choose one of {', '.join(FP8_MODES)}")
        if fp8 == "auto":
            fp8 = choose_fp8(plan, sum(
                component_weight_bytes(path, role, "dequantize", torch_dtype)
                for role, path in paths.weights().items()
            ), mode)
        where = plan.storage_device
        transformer = load_transformer(paths.transformer, device=where, dtype=torch_dtype, fp8=fp8)
        unconditional = None
        if paths.unconditional_transformer is None:
            if warn_single_dit:
                warnings.warn(
                    "no unconditional_transformer: the conditional DiT will also serve the unconditional pass, "
                    "which is not the trained configuration (images will differ from the official pipeline)",
                    stacklevel=3,
                )
        else:
            unconditional = load_transformer(
                paths.unconditional_transformer, device=where_each[-1] if where_each else where, dtype=torch_dtype,
                fp8=fp8, subfolder="unconditional_transformer",
            )
        text_encoder = load_text_encoder(
            paths.text_encoder, device=where, dtype=torch_dtype, fp8=fp8, tokenizer_path=paths.tokenizer
        )
        vae = load_vae(paths.vae, device=where, dtype=torch_dtype)
        for module in (transformer, unconditional, text_encoder, vae):
            if module is not None:
                plan.place(module)
        pipe = cls(transformer, text_encoder, text_encoder.tokenizer, vae, unconditional, plan, model_name)
        if len(where_each) == 2:
            pipe.use_devices(where_each)
        pipe.set_mode(mode, compile_cache)
        return pipe

    def warm_up(self, status: Callable[[str], None] = lambda line: None) -> float:
        """Compile the DiT blocks ahead of the first request (exact and fast modes; nothing to do in
        eager mode), telling `status` what is happening instead of stalling the first image: about
        20 s on a GPU the first time, a few seconds when the compile cache has the kernels. Returns
        the seconds spent."""
        if self.mode == "eager":
            return 0.0
        from ideogram_app.speed.compiled import warm_up

        seconds = 0.0
        quiet = False
        for dit in {id(d): d for d in (self.transformer, self.unconditional_transformer) if d is not None}.values():
            # One DiT at a time inside the memory plan (offload keeps one on the GPU); the second finds
            # the first's graphs unless it sits on another GPU or differs in structure, so it is quiet.
            with self.memory.running(dit):
                seconds += warm_up([dit], device=next(dit.parameters()).device,
                                   status=(lambda line: None) if quiet else status)
            quiet = True
        return seconds

    def use_devices(self, devices: str | Sequence[str | torch.device]) -> None:
        """CFG-parallel: keep the unconditional DiT on the second of two GPUs and everything else on the
        first (ideogram_app/speed/cfg_parallel.py). One device puts everything back on it."""
        devices = parse_devices(devices)
        if len(devices) == 2:
            self.memory = place_for_cfg_parallel(
                transformer=self.transformer, unconditional=self.unconditional_transformer,
                text_encoder=self.text_encoder, vae=self.vae, devices=devices,
            )
        elif self.unconditional_transformer is not None:
            self.memory.place(self.unconditional_transformer)
        self.devices = devices

    def set_mode(self, mode: str, compile_cache: str | os.PathLike | None = None) -> None:
        """Run the DiTs in speed `mode` (ideogram_app/speed). The passes change the modules in place, so
        a pipeline leaves eager mode once; another mode means loading again."""
        check_speed_mode(mode)
        if mode == self.mode:
            return
        if self.mode != "eager":
            raise ValueError(f"this pipeline already runs in {self.mode} mode; load the model again to use {mode} mode")
        for dit in {id(d): d for d in (self.transformer, self.unconditional_transformer) if d is not None}.values():
            apply_speed_mode(dit, mode, cache_dir=compile_cache)
        self.mode = mode

    # ----- validation (no model work) ------------------------------------------------------------
    def prepare(
        self,
        prompt: str | dict | Caption,
        settings: GenerationSettings | None = None,
        *,
        negative_prompt: str = "",
        rand_device: str | torch.device = "cpu",
        **values,
    ) -> GenerationRequest:
        """Check everything and return the run it describes; raises before any model work.

        Pass a `GenerationSettings`, or its fields as keywords (width, height, preset,
        num_inference_steps, cfg_scale, guidance_schedule, mu, std, seed, num_images,
        denoising_strength, input_image, edit_region); keywords override the fields of `settings`.
        """
        unknown = sorted(set(values) - set(SETTING_NAMES))
        if unknown:
            raise TypeError(f"unknown generation setting(s) {', '.join(unknown)}; the settings are {', '.join(SETTING_NAMES)}")
        if settings is None:
            settings = GenerationSettings(limits=self.limits, **values)
        elif values:
            settings = settings.with_changes(**values)
        _warn_negative_prompt(negative_prompt)
        try:
            rand_device = torch.device(rand_device)
        except (RuntimeError, TypeError):
            raise ValueError(f"rand_device {rand_device!r} is not a torch device name like 'cpu' or 'cuda'") from None
        if rand_device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("rand_device 'cuda' needs a CUDA GPU; use rand_device='cpu'")
        for message in settings.warnings:
            log.warning("%s", message)
        image = None
        if settings.img2img:
            image = fit_image(open_image(settings.input_image, settings.limits), settings.width, settings.height)
        if isinstance(prompt, str):
            settings.limits.check_caption_chars(prompt)
        prepared = prepare_prompt(prompt)
        num_tokens = self.tokenizer.count(prepared.text)
        check_token_count(num_tokens)
        return GenerationRequest(
            settings=settings,
            prompt=prepared,
            num_text_tokens=num_tokens,
            input_image=image,
            rand_device=rand_device,
            warnings=settings.warnings + tuple(str(issue) for issue in prepared.warnings),
        )

    # ----- generation ------------------------------------------------------------------------------
    def __call__(
        self,
        prompt: str | dict | Caption,
        negative_prompt: str = "",
        *,
        settings: GenerationSettings | None = None,
        rand_device: str | torch.device = "cpu",
        callback: Callable[[int, int], None] | None = None,
        stop_event: threading.Event | None = None,
        output_type: Literal["pil", "latent"] = "pil",
        preview: Preview | None = None,
        preview_every: int = 1,
        **values,
    ):
        """Generate. Settings as in `prepare` (DiffSynth's keyword names: cfg_scale, input_image,
        denoising_strength, height, width, seed, rand_device, num_inference_steps).

        Returns one PIL image (num_images=1) or a list, each carrying its metadata in `image.info`
        (see metadata.py); `output_type="latent"` returns the final normalised latent tokens
        (B, N_img, 128) instead. `callback(step, total)` runs after every step; a set `stop_event`
        raises GenerationCancelled before the next one. `preview(step, total, image)` gets a cheap RGB
        picture of the expected result every `preview_every` steps and at the last (preview.py)."""
        request = self.prepare(prompt, settings, negative_prompt=negative_prompt, rand_device=rand_device, **values)
        return self.run(request, callback=callback, stop_event=stop_event, output_type=output_type, preview=preview,
                        preview_every=preview_every)

    @torch.inference_mode()
    def run(
        self,
        request: GenerationRequest,
        callback: Callable[[int, int], None] | None = None,
        stop_event: threading.Event | None = None,
        output_type: Literal["pil", "latent"] = "pil",
        preview: Preview | None = None,
        preview_every: int = 1,
    ):
        """Execute a validated request (see `prepare`; `preview` as in `__call__`): `start`, the
        denoising loop over the guided velocity of the two DiTs (on one device or two), `finish`."""
        if output_type not in ("pil", "latent"):
            raise ValueError(f"output_type must be 'pil' or 'latent', got {output_type!r}")
        started = self.start(request, preview, preview_every)
        unconditional = self.unconditional_transformer or self.transformer
        velocity = cfg_velocity(self.transformer, unconditional, started.conditioning, self.memory, self.devices,
                                self._pass_scales())
        z = denoise(velocity, started.z, request.settings.times, request.settings.sampler.guidance, callback, stop_event,
                    started.after_step)
        if stop_event is not None and stop_event.is_set():
            raise GenerationCancelled("generation stopped before decoding")
        return self.finish(request, started, z, output_type)

    def start(self, request: GenerationRequest, preview: Preview | None = None, preview_every: int = 1) -> "RunStart":
        """Everything before the denoising loop: text features, conditioning, the starting latents
        (noise, or the noised input image) and the hook that runs after each step (a region edit's
        `keep`, a live preview). Apart from `run` so a loop elsewhere (two processes,
        ideogram_app/speed/cfg_parallel.py) composes the same stages."""
        settings = request.settings
        grid_h, grid_w = token_grid(settings.width, settings.height)
        features = self.encode_prompt(request.prompt.text)
        if features.shape[1] != request.num_text_tokens:
            raise RuntimeError(
                f"text encoder returned {features.shape[1]} tokens, the tokenizer counted {request.num_text_tokens}"
            )
        unconditional = self.unconditional_transformer or self.transformer
        conditioning = prepare_conditioning(
            self.transformer, unconditional, features, grid_h, grid_w, settings.num_images, self.memory
        )
        times = settings.times
        z = noise = initial_noise(settings.seeds, grid_h, grid_w, request.rand_device)
        region = keep = None
        if request.input_image is not None:
            clean = encode_image(self.vae, image_to_tensor(request.input_image), self.memory)
            z = noised_start(clean, noise, times[0])
            if settings.edit_region is not None:  # region.py: only the box is regenerated
                region = region_mask(settings.edit_region, settings.width, settings.height)
                keep = keep_outside(region, clean, noise, len(times) - 1, self.memory.device)
        if preview is not None:  # watches the latents after `keep` (if any) has set them
            keep = PreviewHook(projection_for(self.vae, self.memory), z, times, grid_h, grid_w, preview, preview_every,
                               then=keep)
        return RunStart(conditioning, z.to(self.memory.device), keep, (grid_h, grid_w), region)

    def finish(self, request: GenerationRequest, started: "RunStart", z: torch.Tensor,
               output_type: Literal["pil", "latent"] = "pil"):
        """Everything after the loop: the latents themselves (`output_type="latent"`), or decoded
        images (the input's pixels pasted back outside an edited region) carrying their metadata."""
        if output_type == "latent":
            return z
        pixels = decode_tokens(self.vae, z, *started.grid, self.memory)
        if started.region is not None:
            pixels = paste_outside(pixels, image_to_tensor(request.input_image), started.region)
        images = [attach_metadata(image, self.record(request, i)) for i, image in enumerate(tensor_to_images(pixels))]
        return images[0] if len(images) == 1 else images

    # ----- LoRA ----------------------------------------------------------------------------------
    def load_lora(
        self,
        *where,
        scale: float = 1.0,
        target: str = "transformer",
        name: str | None = None,
        merge: bool = False,
        alpha: float | None = None,
    ) -> LoraReport:
        """Put a LoRA file on one DiT: `pipe.load_lora(path, scale=1.0, target="transformer")`.

        LoRAs are trained on the conditional `transformer`, so that is the default target;
        `target="unconditional_transformer"` puts one on the other DiT, and
        `target="unconditional_lora"` puts one on the conditional DiT for the unconditional pass only
        (see `from_pretrained(unconditional="lora")`). DiffSynth's spelling
        `pipe.load_lora(pipe.dit, path, alpha=1.0)` works too (`alpha` is the scale there). Several
        LoRAs stack, each under its own name (default: the file's stem). The file is checked
        completely (ideogram_app/lora) before the model changes; what was loaded goes into the
        metadata of every image made while it is on.
        """
        if len(where) == 2 and isinstance(where[0], torch.nn.Module):
            target = self._target_of(where[0])
            where = where[1:]
        if len(where) != 1:
            raise TypeError("load_lora takes a path, or a DiT and a path: load_lora(path) / load_lora(pipe.dit, path)")
        path = where[0]
        if alpha is not None:
            scale = alpha
        model = self._lora_model(target)
        if target == "unconditional_lora" and self.unconditional_transformer is not None:
            raise ValueError("an unconditional LoRA replaces the unconditional transformer; load the pipeline with "
                             "unconditional='lora' to use one")
        if name is not None and name in self._lora_files:
            raise ValueError(f"a LoRA named {name!r} is already loaded; unload it first or choose another name")
        report = apply_lora(model, path, name=name, scale=scale, merge=merge)
        if report.name in self._lora_files:  # the same default name on the other DiT
            remove(model, report.name)
            raise ValueError(f"a LoRA named {report.name!r} is already loaded; pass name= to load this one too")
        self._lora_files[report.name] = (target, file_sha256(path))
        return report

    def set_lora_scale(self, name: str, scale: float) -> LoraReport:
        """Change a loaded LoRA's strength without reloading anything (0 switches it off)."""
        return set_scale(self._lora_model(self._lora_target(name)), name, scale)

    def unload_lora(self, name: str | None = None) -> None:
        """Take one LoRA off (or all of them); the base weights come back bit for bit."""
        names = list(self._lora_files) if name is None else [name]
        for each in names:
            remove(self._lora_model(self._lora_target(each)), each)
            del self._lora_files[each]

    @property
    def loras(self) -> list[dict]:
        """What is loaded, in load order: name, file, sha256, scale, target, merged (also written into
        each image's metadata, so a result can be re-made with the same LoRAs)."""
        rows = []
        for name, (target, digest) in self._lora_files.items():
            report = loaded(self._lora_model(target))[name]
            rows.append({"name": name, "file": os.path.basename(report.source), "sha256": digest,
                         "scale": report.scale, "target": target, "merged": report.merged})
        return rows

    def _lora_model(self, target: str) -> torch.nn.Module:
        if target in ("transformer", "unconditional_lora"):
            return self.transformer
        if target == "unconditional_transformer":
            if self.unconditional_transformer is None:
                raise ValueError("this pipeline has no unconditional_transformer to put a LoRA on")
            return self.unconditional_transformer
        raise ValueError(
            f"LoRA target {target!r} is unknown; choose 'transformer', 'unconditional_transformer' or 'unconditional_lora'"
        )

    def _pass_scales(self) -> tuple[dict[str, float], dict[str, float]] | None:
        """With unconditional LoRAs on the conditional DiT: off in the conditional pass; in the
        unconditional pass they are on and the conditional DiT's own LoRAs are off."""
        on_dit = {name: target for name, (target, _) in self._lora_files.items() if target in ("transformer", "unconditional_lora")}
        negative = [name for name, target in on_dit.items() if target == "unconditional_lora"]
        if not negative or self.unconditional_transformer is not None:
            return None
        return {name: 0.0 for name in negative}, {name: 0.0 for name, target in on_dit.items() if target == "transformer"}

    def _lora_target(self, name: str) -> str:
        if name not in self._lora_files:
            raise KeyError(f"no LoRA named {name!r} is loaded (loaded: {', '.join(self._lora_files) or 'none'})")
        return self._lora_files[name][0]

    def _target_of(self, module: torch.nn.Module) -> str:
        if module is self.transformer:
            return "transformer"
        if module is not None and module is self.unconditional_transformer:
            return "unconditional_transformer"
        raise ValueError("load_lora's first argument must be pipe.dit or pipe.dit_uncond")

    def encode_prompt(self, text: str) -> torch.Tensor:
        """Text features (1, N, F) fp32; the encoder runs once per distinct prompt (last one cached)."""
        if self._encoded is None or self._encoded[0] != text:
            self._encoded = (text, encode_text(self.text_encoder, text, self.memory))
        return self._encoded[1]

    def record(self, request: GenerationRequest, index: int) -> dict:
        settings, sampler = request.settings, request.settings.sampler
        return make_record(request.prompt.text, request.prompt.kind, {
            "model": self.model_name,
            "mode": self.mode,
            **({"devices": [str(d) for d in self.devices]} if len(self.devices) == 2 else {}),
            "preset": sampler.preset,
            "steps": sampler.steps,
            "guidance": list(sampler.guidance),
            "mu": sampler.mu,
            "std": sampler.std,
            "width": settings.width,
            "height": settings.height,
            "seed": settings.seeds[index],
            "denoising_strength": settings.denoising_strength,
            "img2img": request.input_image is not None,
            **({"edit_region": list(settings.edit_region)} if settings.edit_region is not None else {}),
            **({"loras": self.loras} if self._lora_files else {}),
        })


def _devices_for(devices, memory: str, paths: ComponentPaths) -> tuple[torch.device, ...]:
    """The devices a load asks for, checked before any file is read: () for the ordinary `device`
    argument, one device, or two for CFG-parallel (which keeps every weight resident, so only the
    `full` memory mode, and needs the unconditional DiT)."""
    if devices is None:
        return ()
    parsed = parse_devices(devices)
    if len(parsed) == 2:
        if memory != "full":
            raise ValueError(f"CFG-parallel on {', '.join(map(str, parsed))} keeps both DiTs resident; it runs with "
                             f"memory='full', not {memory!r}")
        if paths.unconditional_transformer is None:
            raise ValueError("CFG-parallel puts the unconditional transformer on the second GPU; this model has none "
                             "(or unconditional='lora' left it out): use one device")
    return parsed


def _warn_negative_prompt(negative_prompt: str) -> None:
    """Once per process: DiffSynth code passes negative_prompt out of habit."""
    global _warned_negative_prompt
    if negative_prompt and not _warned_negative_prompt:
        _warned_negative_prompt = True
        warnings.warn(
            "negative_prompt is ignored: Ideogram 4 has no negative prompt (its unconditional model never "
            "sees text); it is accepted only for DiffSynth compatibility",
            stacklevel=4,
        )
