"""Command line generation: `python -m ideogram_app.generate --model ID_OR_FOLDER --caption FILE_OR_TEXT --out OUT.png`.

Everything that can be checked without weights (size, preset, steps, strength, caption file and JSON)
is checked before the model loads; the token count is checked right after the tokenizer loads.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ideogram_app.caption import CaptionSyntaxError
from ideogram_app.pipeline.hub import ModelSourceError
from ideogram_app.pipeline.memory import FP8_MODES, MEMORY_MODES
from ideogram_app.pipeline.metadata import save_png
from ideogram_app.pipeline.prompt import InvalidCaptionError, prepare_prompt
from ideogram_app.pipeline.sampling import PRESETS, check_denoising_strength, resolve_sampler
from ideogram_app.pipeline.sizes import SizeError, check_size, parse_size

DTYPES = ("bfloat16", "float16", "float32")


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ideogram_app.generate", description="Generate images with Ideogram 4.")
    p.add_argument("--model", required=True, help="repo id (e.g. ideogram-ai/ideogram-4-fp8; ms://id for ModelScope) or local folder")
    p.add_argument("--caption", required=True, help="caption/prompt file (.json or .txt) or the prompt text itself")
    p.add_argument("--out", required=True, help="output PNG; with --num-images N > 1, OUT-0.png ... OUT-(N-1).png")
    p.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT, multiples of 16 (default 1024x1024)")
    p.add_argument("--preset", default="quality", choices=list(PRESETS), help="sampler preset (default quality: 48 steps)")
    p.add_argument("--steps", type=int, default=None, help="override the preset's step count (its guidance tail is kept)")
    p.add_argument("--cfg", type=float, default=None, help="constant guidance instead of the preset's schedule")
    p.add_argument("--mu", type=float, default=None)
    p.add_argument("--std", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="random when omitted; image i uses seed + i")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--input-image", default=None, help="img2img start image")
    p.add_argument("--strength", type=float, default=None, help="img2img denoising strength in (0, 1]; default 0.7 with --input-image")
    p.add_argument("--memory", default="full", choices=MEMORY_MODES, help="full | offload | cpu")
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


def check_arguments(args: argparse.Namespace) -> dict:
    """Validate what needs no model; return the pipeline keyword arguments."""
    try:
        width, height = parse_size(args.size)
        check_size(width, height)  # errors now; its warnings are logged by the pipeline later
    except SizeError as err:
        raise UsageError(f"--size: {err}") from None
    try:
        resolve_sampler(args.preset, args.steps, args.cfg, None, args.mu, args.std)
    except ValueError as err:
        raise UsageError(str(err).replace("num_inference_steps", "--steps")) from None
    if args.num_images < 1:
        raise UsageError(f"--num-images must be at least 1, got {args.num_images}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    strength = 1.0
    if args.input_image is not None:
        if not Path(args.input_image).is_file():
            raise UsageError(f"--input-image {args.input_image} does not exist")
        strength = 0.7 if args.strength is None else args.strength
    elif args.strength is not None:
        raise UsageError("--strength needs --input-image")
    try:
        check_denoising_strength(strength)
    except ValueError:
        raise UsageError(f"--strength must be in (0, 1] (1.0 = ignore the input image), got {strength}") from None
    prompt = read_caption(args.caption)
    try:
        prepare_prompt(prompt)
    except (CaptionSyntaxError, InvalidCaptionError) as err:
        raise UsageError(f"--caption: {err}") from None
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    return dict(
        prompt=prompt, width=width, height=height, preset=args.preset, num_inference_steps=args.steps,
        cfg_scale=args.cfg, mu=args.mu, std=args.std, seed=args.seed, num_images=args.num_images,
        input_image=args.input_image, denoising_strength=strength,
    )


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        kwargs = check_arguments(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ideogram_app.pipeline.pipeline import Ideogram4Pipeline  # after validation: loads transformers

    try:
        pipe = Ideogram4Pipeline.from_pretrained(
            args.model, torch_dtype=getattr(torch, args.dtype), device=args.device, memory=args.memory, fp8=args.fp8,
        )
    except (ModelSourceError, ValueError, FileNotFoundError) as err:
        print(f"error: cannot load {args.model}: {err}", file=sys.stderr)
        return 1
    try:
        request = pipe.prepare(**kwargs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tqdm(total=request.sampler.steps, desc="denoising", unit="step") as bar:
        result = pipe.run(request, callback=lambda step, total: bar.update(step - bar.n))
    images = result if isinstance(result, list) else [result]
    for image, path, seed in zip(images, output_paths(Path(args.out), len(images)), request.seeds):
        save_png(image, path)
        print(f"saved {path} (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
