"""Every trainer setting, once: the command line and the app's Train tab both read `SETTINGS`.

DiffSynth-Studio's flags keep their names and meanings, so a DiffSynth Ideogram 4 command line runs
unchanged (`accelerate launch examples/…/train.py ARGS` → `accelerate launch -m ideogram_app.train
ARGS`); ours are added on top. DiffSynth flags this trainer cannot honour are still accepted by the
parser so that they can be answered with a sentence instead of argparse's "unrecognized arguments":
`unsupported` ones stop the run, `ignored` ones (DiffSynth itself never uses them) only warn.

`check_config` validates every value before any file or model is touched and reports all problems
at once, each naming its flag (docs/training.md, "Settings").
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Callable

from ideogram_app.limits import DEFAULT_LIMITS
from ideogram_app.pipeline.sampling import PRESETS
from ideogram_app.pipeline.sizes import MULTIPLE

DIFFSYNTH_LORA_TARGETS = "attention.qkv,attention.o,feed_forward.w1,feed_forward.w2,feed_forward.w3,adaln_modulation"
TASKS = ("sft", "sft:data_process", "sft:train")
SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")
SAVE_FORMATS = ("native", "diffusers", "both")
DTYPES = ("bfloat16", "float32")
MODEL_NAMES = ("dit", "text_encoder", "vae")


@dataclass(frozen=True)
class Setting:
    """One flag. `kind`: "value" (typed), "flag" (store_true), "unsupported" / "ignored" (accepted only
    to explain; `note` says why and what to use instead)."""

    name: str
    default: Any
    help: str
    group: str
    origin: str = "ours"  # "diffsynth" or "ours"
    type: Callable[[str], Any] = str
    choices: tuple[Any, ...] | None = None
    kind: str = "value"
    note: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name


def _diffsynth(name, default, help, group, **kw) -> Setting:
    return Setting(name, default, help, group, origin="diffsynth", **kw)


def _unsupported(name, note, default=None, kind="unsupported", type=str) -> Setting:
    return Setting(name, default, note, "unsupported DiffSynth flags", origin="diffsynth", kind=kind, note=note, type=type)


def _flag(value: str) -> bool:
    """DiffSynth's boolean flags take no value; this parses `--x true` style values for the Train tab."""
    return str(value).lower() in ("1", "true", "yes", "on")


SETTINGS: tuple[Setting, ...] = (
    # --- data ---
    _diffsynth("dataset_base_path", "", "folder the metadata's image paths are relative to; without "
               "--dataset_metadata_path, a folder of images with .json/.txt caption sidecars", "data"),
    _diffsynth("dataset_metadata_path", None, "metadata file (.csv, .json or .jsonl) with image and prompt columns", "data"),
    _diffsynth("dataset_repeat", 1, "each sample is seen this many times per epoch", "data", type=int),
    _diffsynth("dataset_num_workers", 0, "threads that decode, check and resize images while the caches are built", "data", type=int),
    _diffsynth("data_file_keys", "image,video", "metadata columns that hold files; the one present is the image column", "data"),
    _diffsynth("height", None, "fixed training height (with --width): every image is resized to cover and centre-cropped", "data", type=int),
    _diffsynth("width", None, "fixed training width (with --height)", "data", type=int),
    _diffsynth("max_pixels", 1024 * 1024, "area cap of the per-image size when --height/--width are not given "
               "(sides floored to multiples of 16, never upscaled)", "data", type=int),
    _diffsynth("num_frames", None, "video frames; Ideogram 4 is an image model, so only 1 (or leaving it out) is accepted", "data", type=int),
    Setting("skip_bad_samples", False, "drop unreadable images and invalid captions with a warning instead of stopping", "data", kind="flag"),
    Setting("trigger", None, "a word put in front of every caption's --trigger_field (or of plain-text captions)", "data"),
    Setting("trigger_field", "high_level_description", "caption field (dotted path) that gets --trigger", "data"),
    # --- model ---
    Setting("model", None, "repo id (ms://id for ModelScope) or local folder holding transformer/, text_encoder/, vae/, tokenizer/", "model"),
    _diffsynth("model_paths", None, 'JSON list of local model files or folders (a list inside the list = one sharded model)', "model"),
    _diffsynth("model_id_with_origin_paths", None, "comma list of model_id:file_pattern, e.g. "
               "ideogram-ai/ideogram-4-fp8:transformer/diffusion_pytorch_model.safetensors", "model"),
    _diffsynth("tokenizer_path", None, "tokenizer folder, or model_id:pattern (default: the model's tokenizer/)", "model"),
    _diffsynth("fp8_models", None, "comma list of frozen models kept in scaled fp8 (dit, text_encoder); a bf16 DiT is "
               "quantised per output row at load", "model"),
    Setting("dtype", "bfloat16", "compute and weight dtype (float32 for exact CPU tests)", "model", choices=DTYPES),
    _diffsynth("extra_inputs", None, "per-sample metadata columns passed to the model; Ideogram 4 takes none", "model"),
    # --- what trains ---
    _diffsynth("trainable_models", None, "'dit' for a full fine-tune of the conditional DiT", "training"),
    _diffsynth("lora_base_model", None, "'dit' to train a LoRA on the conditional DiT", "lora"),
    _diffsynth("lora_target_modules", DIFFSYNTH_LORA_TARGETS, "comma list of module names or name suffixes "
               "('' = every Linear inside the blocks)", "lora"),
    _diffsynth("lora_rank", 32, "LoRA rank", "lora", type=int),
    Setting("lora_alpha", None, "LoRA alpha (default: the rank, i.e. scale 1, as DiffSynth)", "lora", type=float),
    _diffsynth("lora_checkpoint", None, "LoRA file to continue from (any layout the LoRA reader accepts)", "lora"),
    _diffsynth("preset_lora_path", None, "LoRA merged into the base before training (differential LoRA)", "lora"),
    _diffsynth("preset_lora_model", None, "which model gets --preset_lora_path ('dit')", "lora"),
    # --- optimisation ---
    _diffsynth("task", "sft", "sft (cache + train), sft:data_process (only build the caches), sft:train (only train "
               "from existing caches)", "training", choices=TASKS),
    _diffsynth("learning_rate", 1e-4, "peak learning rate", "training", type=float),
    _diffsynth("weight_decay", 0.01, "AdamW weight decay", "training", type=float),
    _diffsynth("num_epochs", 1, "epochs (ignored when --max_steps is given)", "training", type=int),
    Setting("max_steps", None, "stop after this many optimiser steps, whatever the epoch count", "training", type=int),
    Setting("batch_size", 1, "samples per process and micro-step; a batch never mixes image sizes", "training", type=int),
    _diffsynth("gradient_accumulation_steps", 1, "micro-steps per optimiser step", "training", type=int),
    Setting("optimizer", "adamw", "adamw, or adamw8bit (needs bitsandbytes)", "training", choices=OPTIMIZERS),
    Setting("lr_scheduler", "constant", "learning-rate shape after warmup", "training", choices=SCHEDULERS),
    Setting("lr_warmup_steps", 0, "optimiser steps of linear warmup from 0", "training", type=int),
    Setting("max_grad_norm", 1.0, "gradient clipping norm (0 = no clipping; the norm is still logged)", "training", type=float),
    Setting("seed", 0, "seed of the data order, timesteps, noise and LoRA init", "training", type=int),
    Setting("logit_mean", 0.0, "mu of the timestep distribution (its mean is mu + 0.5 ln(H*W/512^2))", "training", type=float),
    Setting("logit_std", 1.5, "std of the timestep distribution", "training", type=float),
    _diffsynth("find_unused_parameters", False, "passed to DistributedDataParallel", "training", kind="flag"),
    # --- memory ---
    _diffsynth("use_gradient_checkpointing", False, "recompute each block in the backward pass", "memory", kind="flag"),
    _diffsynth("use_gradient_checkpointing_offload", False, "also keep the saved block inputs in CPU RAM", "memory", kind="flag"),
    # --- outputs ---
    _diffsynth("output_path", "./models", "run folder: outputs, checkpoints, run.json, metrics.jsonl, validation/", "output"),
    _diffsynth("remove_prefix_in_ckpt", "pipe.dit.", "accepted for DiffSynth command lines; outputs always use the "
               "native key layout", "output"),
    _diffsynth("save_steps", None, "checkpoint every N optimiser steps (default: at the end of every epoch)", "output", type=int),
    Setting("keep_checkpoints", 3, "how many checkpoints to keep (oldest deleted first)", "output", type=int),
    Setting("resume", None, "'latest' or a checkpoint folder to continue from", "output"),
    Setting("cache_dir", None, "where VAE latents and text features are cached across runs "
            "(default ~/.cache/ideogram_app/train)", "output"),
    Setting("save_format", "native", "LoRA file layout: native (ComfyUI/original keys), diffusers, or both", "output",
            choices=SAVE_FORMATS),
    # --- validation ---
    Setting("validation_prompts", None, "file of prompts (.txt one per line, .json list or .jsonl) sampled during training", "validation"),
    Setting("validation_steps", None, "sample the validation prompts every N optimiser steps (and at the end)", "validation", type=int),
    Setting("validation_preset", "default", "sampler preset of the validation samples", "validation", choices=tuple(PRESETS)),
    # --- DiffSynth flags accepted only to explain ---
    _unsupported("offload_models", "split-training disk offload is not implemented; caches replace split training "
                 "(use --task sft:data_process, then --task sft:train)"),
    _unsupported("quant_options", "dynamic quantisation is not implemented; use --fp8_models dit or an fp8/nf4 checkpoint"),
    _unsupported("customized_optimizer", "use --optimizer adamw8bit for bitsandbytes' 8-bit AdamW"),
    _unsupported("template_model_id_or_path", "template models do not exist for Ideogram 4"),
    _unsupported("enable_lora_hot_loading", "not used by Ideogram 4 in DiffSynth either", kind="ignored", type=_flag),
    _unsupported("enable_model_cpu_offload", "hook-based weight offload is not implemented; use --fp8_models dit and "
                 "--use_gradient_checkpointing_offload", type=_flag),
    _unsupported("enable_optimizer_cpu_offload", "optimizer CPU offload is not implemented; use --optimizer adamw8bit", type=_flag),
    _unsupported("cpu_offload_split_threshold", "hook-based weight offload is not implemented"),
    _unsupported("resume_from_checkpoint", "DiffSynth parses but never uses it; use --resume latest|PATH", kind="ignored"),
    _unsupported("enable_tensorboard_log", "loggers: metrics go to metrics.jsonl in --output_path", kind="ignored", type=_flag),
    _unsupported("enable_swanlab_log", "loggers: metrics go to metrics.jsonl in --output_path", kind="ignored", type=_flag),
    _unsupported("swanlab_project", "loggers: metrics go to metrics.jsonl in --output_path", kind="ignored"),
    _unsupported("enable_wandb_log", "loggers: metrics go to metrics.jsonl in --output_path", kind="ignored", type=_flag),
    _unsupported("wandb_project", "loggers: metrics go to metrics.jsonl in --output_path", kind="ignored"),
    _unsupported("enable_csv_log", "metrics go to metrics.jsonl (one JSON row per optimiser step)", kind="ignored", type=_flag),
)
BY_NAME = {s.name: s for s in SETTINGS}

TrainConfig = make_dataclass(
    "TrainConfig", [(s.name, Any, field(default=s.default)) for s in SETTINGS], frozen=True,
    namespace={"__doc__": "The resolved settings of one run (attribute = flag name without dashes)."},
)


class ConfigError(ValueError):
    """Settings that cannot run; `problems` pairs each flag with its message."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{flag}: {message}" for flag, message in problems))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ideogram_app.train",
        description="Train a LoRA or fully fine-tune the Ideogram 4 DiT (DiffSynth-compatible flags; see docs/training.md).",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in SETTINGS:
        group = groups.setdefault(s.group, parser.add_argument_group(s.group))
        if s.kind == "flag":
            group.add_argument(s.flag, action="store_true", help=s.help)
        elif s.type is _flag:  # unsupported boolean DiffSynth flags: bare switch, as in DiffSynth
            group.add_argument(s.flag, action="store_const", const=True, default=None, help=argparse.SUPPRESS)
        elif s.kind in ("unsupported", "ignored"):
            group.add_argument(s.flag, default=None, help=argparse.SUPPRESS)
        else:  # types are checked by check_config, so its messages (not argparse's) name the problem
            group.add_argument(s.flag, default=s.default, help=f"{s.help} (default: {s.default})")
    return parser


def _convert(s: Setting, value: Any) -> Any:
    """A value from the command line (str) or the Train tab (any JSON value) in the setting's type."""
    if value is None or s.kind == "flag":
        return bool(value) if s.kind == "flag" else None
    if s.type is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or (not isinstance(value, int) and not (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
            raise ValueError(f"must be a whole number, got {value!r}")
        return int(value)
    if s.type is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {value!r}")
        return number
    if s.type is _flag:
        return value if isinstance(value, bool) else _flag(value)
    return str(value)


def config_from_values(values: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """Typed, checked settings from {name: value} (the Train tab's path) and the warnings about them;
    raises ConfigError."""
    unknown = sorted(set(values) - set(BY_NAME))
    problems = [(f"--{name}", "is not a setting of this trainer (python -m ideogram_app.train --help lists them)") for name in unknown]
    typed: dict[str, Any] = {}
    for name, value in values.items():
        if name in BY_NAME:
            s = BY_NAME[name]
            try:
                typed[name] = _convert(s, value)
            except ValueError as err:
                problems.append((s.flag, str(err)))
            if s.choices is not None and typed.get(name) is not None and typed[name] not in s.choices:
                problems.append((s.flag, f"{typed[name]!r} is not one of {', '.join(map(str, s.choices))}"))
    config = TrainConfig(**{k: v for k, v in typed.items() if ("--" + k) not in dict(problems)})
    try:
        warnings = check_config(config)
    except ConfigError as err:  # report the typing problems and the rule problems together
        named = dict(problems)
        problems += [p for p in err.problems if p[0] not in named]
    if problems:
        raise ConfigError(problems)
    return config, warnings


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, list[str]]:
    """The command line's settings (argparse exits on unknown flags, as usual)."""
    namespace = build_parser().parse_args(argv)
    return config_from_values({s.name: getattr(namespace, s.name) for s in SETTINGS})


def split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def check_config(c: TrainConfig) -> list[str]:
    """Raise ConfigError listing every problem; return warnings (flags that are accepted but do nothing)."""
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []

    def bad(name: str, message: str) -> None:
        problems.append(("--" + name, message))

    for s in SETTINGS:
        value = getattr(c, s.name)
        if s.kind == "unsupported" and value not in (None, False):
            bad(s.name, f"is not supported by this trainer: {s.note}")
        elif s.kind == "ignored" and value not in (None, False):
            warnings.append(f"--{s.name} is ignored: {s.note}")

    for name, low in (("dataset_repeat", 1), ("dataset_num_workers", 0), ("lora_rank", 1), ("num_epochs", 1),
                      ("batch_size", 1), ("gradient_accumulation_steps", 1), ("lr_warmup_steps", 0),
                      ("keep_checkpoints", 1), ("max_steps", 1), ("save_steps", 1), ("validation_steps", 1)):
        value = getattr(c, name)
        if value is not None and value < low:
            bad(name, f"must be at least {low}, got {value}")
    for name in ("learning_rate", "logit_std"):
        if getattr(c, name) <= 0:
            bad(name, f"must be positive, got {getattr(c, name)}")
    for name in ("weight_decay", "max_grad_norm"):
        if getattr(c, name) < 0:
            bad(name, f"must be zero or positive, got {getattr(c, name)}")
    if c.lora_alpha is not None and c.lora_alpha <= 0:
        bad("lora_alpha", f"must be positive, got {c.lora_alpha}")
    if c.lr_warmup_steps and c.max_steps is not None and c.lr_warmup_steps >= c.max_steps:
        bad("lr_warmup_steps", f"{c.lr_warmup_steps} warmup steps leave nothing of --max_steps {c.max_steps}")

    # data
    if not c.dataset_base_path:
        bad("dataset_base_path", "is required (the image folder, or the folder the metadata's paths are relative to)")
    elif not Path(c.dataset_base_path).is_dir():
        bad("dataset_base_path", f"folder {c.dataset_base_path} does not exist")
    if c.dataset_metadata_path is not None and not Path(c.dataset_metadata_path).is_file():
        bad("dataset_metadata_path", f"file {c.dataset_metadata_path} does not exist")
    if not split_list(c.data_file_keys):
        bad("data_file_keys", "names no column")
    if c.num_frames not in (None, 1):
        bad("num_frames", f"Ideogram 4 is an image model; --num_frames {c.num_frames} does not apply (leave it out)")
    if (c.height is None) != (c.width is None):
        bad("height" if c.height is None else "width", "--height and --width go together (or leave both out for per-image sizes)")
    limits = DEFAULT_LIMITS
    for name in ("height", "width"):
        value = getattr(c, name)
        if value is not None and (value % MULTIPLE or not limits.min_side <= value <= limits.max_side):
            bad(name, f"must be a multiple of {MULTIPLE} between {limits.min_side} and {limits.max_side}, got {value}")
    if not limits.min_side**2 <= c.max_pixels <= limits.max_pixels:
        bad("max_pixels", f"must be between {limits.min_side ** 2:,} and {limits.max_pixels:,}, got {c.max_pixels:,}")
    if c.extra_inputs:
        bad("extra_inputs", "Ideogram 4 takes no extra per-sample inputs; DiffSynth's timestep-boundary columns refer to "
            "its fixed 1000-point grid, which this trainer does not use (leave the flag out)")
    if c.trigger is not None and not c.trigger.strip():
        bad("trigger", "is empty")

    # model
    model_sources = [n for n in ("model", "model_paths", "model_id_with_origin_paths") if getattr(c, n)]
    if not model_sources:
        bad("model", "name the model: --model ID_OR_FOLDER, or DiffSynth's --model_paths / --model_id_with_origin_paths")
    elif "model" in model_sources and len(model_sources) > 1:
        bad("model", f"give either --model or --{' / --'.join(model_sources[1:])}, not both")
    if c.model_paths:
        try:
            entries = json.loads(c.model_paths)
            if not isinstance(entries, list) or not all(isinstance(e, str) or (isinstance(e, list) and e and all(isinstance(x, str) for x in e)) for e in entries):
                raise ValueError
        except ValueError:
            bad("model_paths", 'must be a JSON list of paths, e.g. ["transformer/model.safetensors", ...]')
    for entry in split_list(c.model_id_with_origin_paths):
        if ":" not in entry:
            bad("model_id_with_origin_paths", f"entry {entry!r} is not model_id:file_pattern")
    unknown_fp8 = [m for m in split_list(c.fp8_models) if fp8_role(m) is None]
    if unknown_fp8:
        bad("fp8_models", f"{', '.join(unknown_fp8)} is not one of dit, text_encoder (the VAE always stays in the compute dtype)")

    # what trains
    trainable = split_list(c.trainable_models)
    if any(m != "dit" for m in trainable):
        bad("trainable_models", f"only the conditional DiT ('dit') can be trained, got {c.trainable_models!r}")
    if c.lora_base_model not in (None, "dit"):
        bad("lora_base_model", f"LoRA trains on the conditional DiT only ('dit'), got {c.lora_base_model!r}")
    if trainable and c.lora_base_model:
        bad("trainable_models", "choose a full fine-tune (--trainable_models dit) or a LoRA (--lora_base_model dit), not both")
    if not trainable and not c.lora_base_model and c.task != "sft:data_process":
        bad("lora_base_model", "nothing to train: pass --lora_base_model dit (LoRA) or --trainable_models dit (full fine-tune)")
    if trainable and "dit" in {fp8_role(m) for m in split_list(c.fp8_models)}:
        bad("fp8_models", "the DiT cannot be stored in fp8 while it trains (--trainable_models dit)")
    if trainable:
        for name in ("lora_checkpoint", "lora_alpha"):
            if getattr(c, name) is not None:
                bad(name, "applies to LoRA training only (--lora_base_model dit)")
        if c.save_format != "native":
            bad("save_format", "applies to LoRA files; a full fine-tune is written as transformer/ in the bf16-repackage layout")
    if c.preset_lora_model not in (None, "dit"):
        bad("preset_lora_model", f"a preset LoRA goes on the conditional DiT ('dit'), got {c.preset_lora_model!r}")
    if c.preset_lora_model and not c.preset_lora_path:
        bad("preset_lora_model", "needs --preset_lora_path")
    for name in ("lora_checkpoint", "preset_lora_path", "validation_prompts"):
        value = getattr(c, name)
        if value is not None and not Path(value).is_file():
            bad(name, f"file {value} does not exist")
    if c.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        bad("optimizer", "adamw8bit needs bitsandbytes (pip install bitsandbytes), which is not installed")
    if c.use_gradient_checkpointing_offload and not c.use_gradient_checkpointing:
        warnings.append("--use_gradient_checkpointing_offload implies --use_gradient_checkpointing")

    # outputs
    if c.resume is not None and c.resume != "latest" and not Path(c.resume).is_dir():
        bad("resume", f"{c.resume} is neither 'latest' nor a checkpoint folder")
    if c.validation_steps is not None and c.validation_prompts is None:
        bad("validation_steps", "needs --validation_prompts")
    if c.remove_prefix_in_ckpt not in ("pipe.dit.", "", None):
        warnings.append(f"--remove_prefix_in_ckpt {c.remove_prefix_in_ckpt!r} is ignored: outputs always use the native key layout")
    if problems:
        raise ConfigError(problems)
    return warnings


def fp8_role(name: str) -> str | None:
    """DiffSynth names models by role or by file; both map to a role here."""
    lowered = name.lower()
    if lowered in ("dit", "transformer") or lowered.startswith("transformer/") or "/transformer/" in lowered:
        return "dit"
    if lowered == "text_encoder" or "text_encoder" in lowered:
        return "text_encoder"
    return None


def is_lora(c: TrainConfig) -> bool:
    return c.lora_base_model == "dit"


def lora_alpha(c: TrainConfig) -> float:
    return float(c.lora_alpha if c.lora_alpha is not None else c.lora_rank)


def cache_root(c: TrainConfig) -> Path:
    if c.cache_dir:
        return Path(c.cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ideogram_app" / "train"


def as_dict(c: TrainConfig) -> dict[str, Any]:
    """Every setting, for run.json (the resolved command line)."""
    return {f.name: getattr(c, f.name) for f in fields(c)}
