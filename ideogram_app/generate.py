"""Command line generation: `python -m ideogram_app.generate --model ID_OR_FOLDER --caption FILE_OR_TEXT --out OUT.png`.

Everything that can be checked without weights (size, preset, steps, strength, caption file and JSON)
is checked before the model loads; the token count is checked right after the tokenizer loads.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (docs/app.md, "CPU threads")
import torch
from tqdm import tqdm

from ideogram_app.caption import CaptionSyntaxError
from ideogram_app.limits import DEFAULT_LIMITS, LimitError
from ideogram_app.loading.conversion import FP8_MODES
from ideogram_app.pipeline.hub import ModelSourceError
from ideogram_app.pipeline.metadata import save_png
from ideogram_app.pipeline.model_config import components_from_model
from ideogram_app.pipeline.placement import MEMORY_MODES
from ideogram_app.pipeline.prompt import InvalidCaptionError, prepare_prompt
from ideogram_app.pipeline.sampling import PRESETS
from ideogram_app.pipeline.settings import IMG2IMG_STRENGTH, GenerationSettings, SettingsError
from ideogram_app.pipeline.sizes import SizeError, parse_size
from ideogram_app.speed import SPEED_MODES

DTYPES = ("bfloat16", "float16", "float32")
DEFAULT = GenerationSettings(seed=0)  # for the help texts: the one set of defaults


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ideogram_app.generate", description="Generate images with Ideogram 4.")
    p.add_argument("--model", required=True, help="repo id (e.g. ideogram-ai/ideogram-4-fp8; ms://id for ModelScope) or local folder")
    p.add_argument("--caption", required=True, help="caption/prompt file (.json or .txt) or the prompt text itself")
    p.add_argument("--out", required=True, help="output PNG; with --num-images N > 1, OUT-0.png ... OUT-(N-1).png")
    p.add_argument("--size", default=None, help=f"WIDTHxHEIGHT, multiples of 16 (default {DEFAULT.width}x{DEFAULT.height})")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help=f"sampler preset (default {DEFAULT.preset}: {PRESETS[DEFAULT.preset].steps} steps)")
    p.add_argument("--steps", type=int, default=None, help="override the preset's step count (its guidance tail is kept)")
    p.add_argument("--cfg", type=float, default=None, help="constant guidance instead of the preset's schedule")
    p.add_argument("--mu", type=float, default=None)
    p.add_argument("--std", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="random when omitted or -1; image i uses seed + i")
    p.add_argument("--num-images", type=int, default=None, help=f"default {DEFAULT.num_images}")
    p.add_argument("--input-image", default=None, help="img2img start image")
    p.add_argument("--strength", type=float, default=None, help=f"img2img denoising strength in (0, 1]; default {IMG2IMG_STRENGTH} with --input-image")
    p.add_argument("--edit-region", default=None, metavar="Y0,X0,Y1,X1",
                   help="regenerate only this box of --input-image (0-1000 grid, y first) and keep the rest")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="apply a LoRA file to the conditional transformer (repeatable; scale default 1.0)")
    p.add_argument("--transformer", default=None, metavar="PATH",
                   help="conditional DiT to use instead of the model's own: a full fine-tune's output folder "
                        "(python -m ideogram_app.train --trainable_models dit) or any transformer/ folder")
    p.add_argument("--memory", default="full", choices=MEMORY_MODES, help=" | ".join(MEMORY_MODES))
    p.add_argument("--mode", default=None, choices=SPEED_MODES,
                   help="speed mode: eager, exact (compiled, the default on CUDA) or fast (FP8 GEMMs; images differ "
                        "slightly); eager is the default on CPU")
    p.add_argument("--compile-cache", default=None, metavar="FOLDER",
                   help="keep compiled kernels here across runs (exact and fast modes)")
    p.add_argument("--devices", default=None, metavar="cuda:0,cuda:1",
                   help="two GPUs run CFG-parallel (the unconditional DiT on the second); 'auto' takes two when "
                        "there are two, else one")
    p.add_argument("--device", default=None, help="compute device (default cuda if available, else cpu)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--fp8", default="auto", choices=FP8_MODES,
                   help="keep fp8 weights fp8 (memory), widen them once (speed), or auto: widen when the GPU has room")
    return p


def read_caption(value: str):
    """The contents of a caption/prompt file when `value` names one, else `value` itself."""
    if len(value) < 1024 and "\n" not in value and not value.lstrip().startswith("{"):
        path = Path(value)
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise UsageError(f"caption file {value} cannot be read as UTF-8 text ({err})") from None
        if path.suffix.lower() in (".json", ".txt"):
            raise UsageError(f"caption file {value} does not exist")
    return value


# Which flag sets which GenerationSettings field, so its errors name the flag the user typed.
FLAGS = {
    "width": "--size", "height": "--size", "size": "--size", "preset": "--preset", "num_inference_steps": "--steps",
    "cfg_scale": "--cfg", "mu": "--mu", "std": "--std", "seed": "--seed", "num_images": "--num-images",
    "denoising_strength": "--strength", "input_image": "--input-image", "edit_region": "--edit-region",
}


def parse_lora(value: str) -> tuple[Path, float]:
    """'PATH' or 'PATH:SCALE' -> (existing file, scale); checked before any model loads."""
    path, scale = value, 1.0
    head, sep, tail = value.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            path, scale = head, float(tail)
        except ValueError:
            raise UsageError(f"--lora {value}: the part after ':' must be a number (the scale), got {tail!r}") from None
    if not Path(path).is_file():
        raise UsageError(f"--lora: file {path} does not exist")
    return Path(path), scale


def parse_region(value: str) -> list[int]:
    """'Y0,X0,Y1,X1' -> four whole numbers (their range and order are the settings' rules)."""
    try:
        region = [int(part) for part in value.split(",")]
    except ValueError:
        region = []
    if len(region) != 4:
        raise UsageError(f"--edit-region {value}: give four whole numbers y_min,x_min,y_max,x_max on the 0-1000 grid, "
                         "separated by commas (e.g. 100,250,400,750)")
    return region


def transformer_folder(value: str) -> Path:
    """The transformer/ folder of a full fine-tune's output (or the folder itself), with its weights."""
    path = Path(value)
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    if not folder.is_dir() or not (any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json"))):
        raise UsageError(f"--transformer {value}: no transformer weights there (expected a folder with "
                         "transformer/diffusion_pytorch_model.safetensors, or that transformer/ folder)")
    return folder


def check_arguments(args: argparse.Namespace) -> tuple[str, GenerationSettings]:
    """Validate what needs no model; return the prompt and the settings."""
    values = dict(
        preset=args.preset, num_inference_steps=args.steps, cfg_scale=args.cfg, mu=args.mu, std=args.std,
        seed=args.seed, num_images=args.num_images, denoising_strength=args.strength, input_image=args.input_image,
    )
    if args.size is not None:
        try:
            values["width"], values["height"] = parse_size(args.size)
        except SizeError as err:
            raise UsageError(f"--size: {err}") from None
    if args.input_image is not None and not Path(args.input_image).is_file():
        raise UsageError(f"--input-image {args.input_image} does not exist")
    if args.edit_region is not None:
        values["edit_region"] = parse_region(args.edit_region)
    if args.strength is not None and args.input_image is None:
        raise UsageError("--strength needs --input-image")
    try:
        settings = GenerationSettings(**{name: value for name, value in values.items() if value is not None})
    except SettingsError as err:
        raise UsageError("; ".join(f"{FLAGS.get(field, field)}: {message}" for field, message in err.problems)) from None
    prompt = read_caption(args.caption)
    try:
        DEFAULT_LIMITS.check_caption_chars(prompt)
        prepare_prompt(prompt)
    except (LimitError, CaptionSyntaxError, InvalidCaptionError) as err:
        raise UsageError(f"--caption: {err}") from None
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    args.lora = [parse_lora(value) for value in args.lora]
    if args.transformer is not None:
        args.transformer = transformer_folder(args.transformer)
    return prompt, settings


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        prompt, settings = check_arguments(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ideogram_app.pipeline.pipeline import Ideogram4Pipeline  # after validation: loads transformers

    try:
        options = dict(torch_dtype=getattr(torch, args.dtype), device=args.device, memory=args.memory, fp8=args.fp8,
                       mode=args.mode, compile_cache=args.compile_cache, devices=args.devices)
        if args.transformer is None:
            pipe = Ideogram4Pipeline.from_pretrained(args.model, **options)
        else:  # the model's other components around another conditional DiT; the metadata names both
            paths = dataclasses.replace(components_from_model(args.model), transformer=args.transformer)
            pipe = Ideogram4Pipeline.from_components(paths, model_name=f"{args.model} (transformer: {args.transformer})", **options)
    except (ModelSourceError, ValueError, FileNotFoundError) as err:
        print(f"error: cannot load {args.model}: {err}", file=sys.stderr)
        return 1
    pipe.warm_up(lambda line: print(line, file=sys.stderr))
    try:
        for path, scale in args.lora:
            try:
                print(pipe.load_lora(path, scale=scale).summary(), file=sys.stderr)
            except ValueError as err:
                raise ValueError(f"--lora {path}: {err}") from None
        request = pipe.prepare(prompt, settings)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tqdm(total=request.settings.sampler.steps, desc="denoising", unit="step") as bar:
        result = pipe.run(request, callback=lambda step, total: bar.update(step - bar.n))
    images = result if isinstance(result, list) else [result]
    for image, path, seed in zip(images, output_paths(Path(args.out), len(images)), request.settings.seeds):
        save_png(image, path)
        print(f"saved {path} (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
