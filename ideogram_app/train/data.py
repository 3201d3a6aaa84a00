"""Training samples from DiffSynth metadata files or a plain folder, every one checked before training.

Sources (docs/training.md, "Data"):
- a metadata file (`--dataset_metadata_path`): `.json` (a list of objects), `.jsonl` (one object per
  line) or anything else read as CSV, with an image column (the first of `--data_file_keys` that the
  file has) and a `prompt` column; image paths are relative to `--dataset_base_path`;
- a folder (`--dataset_base_path` alone): every image below it, captioned by the `.json` or `.txt`
  file of the same name beside it.

Captions go through the pipeline's prompt preparation (the caption core's verifier and canonical
serialiser), so a caption trains exactly as it would generate. Every image is decoded once here, so a
corrupt, truncated or tiny file is named before any model loads; all problems are reported together.

Sizes: with `--height/--width` every image is resized to cover that size and centre-cropped; else each
image keeps its aspect ratio, shrunk (never enlarged) to at most `--max_pixels` and 2048 pixels a side,
with both sides floored to multiples of 16. Equal sizes form a bucket; a batch never mixes buckets.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ideogram_app.caption import CaptionSyntaxError
from ideogram_app.caption.serialize import to_json
from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.model.prompt_tokenizer import PromptTooLongError, check_token_count
from ideogram_app.pipeline.images import fit_image, image_to_tensor, open_image
from ideogram_app.pipeline.prompt import InvalidCaptionError, prepare_prompt
from ideogram_app.pipeline.sizes import MULTIPLE
from ideogram_app.train.config import TrainConfig, split_list

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PROMPT_COLUMN = "prompt"
# Training images may be large photographs: allow what Pillow itself decodes without refusing.
TRAINING_LIMITS = Limits(max_image_pixels=178_956_970)
MAX_LISTED = 40


class DataError(ValueError):
    """Problems with the dataset, one line per file or row."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:MAX_LISTED]
        more = f"\n  … and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{len(problems)} problem(s) in the dataset:\n" + "\n".join(f"  {p}" for p in shown) + more)


@dataclass(frozen=True)
class Row:
    label: str  # where the sample comes from, for messages: "metadata.csv line 4", "cats/01.png"
    image: Path
    prompt: Any  # str or dict, as read


@dataclass(frozen=True)
class Sample:
    label: str
    image: Path
    caption: str  # exactly what the text encoder reads
    kind: str  # "caption" (structured JSON) or "text" (plain prose)
    width: int
    height: int
    digest: str  # sha256 of the image file: part of its latent cache key

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(frozen=True)
class Dataset:
    samples: list[Sample]
    warnings: list[str]


# ----- rows ----------------------------------------------------------------------------------------

def read_rows(c: TrainConfig) -> list[Row]:
    base = Path(c.dataset_base_path)
    if c.dataset_metadata_path is None:
        return folder_rows(base)
    return metadata_rows(Path(c.dataset_metadata_path), base, split_list(c.data_file_keys))


def metadata_rows(path: Path, base: Path, file_keys: list[str]) -> list[Row]:
    name = path.name
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError([f"{name}: cannot be read as UTF-8 text ({err})"]) from None
    records: list[tuple[str, Any]] = []
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError([f"{name}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"]) from None
        if not isinstance(data, list):
            raise DataError([f"{name}: must be a JSON list of objects (one per sample), got {type(data).__name__}"])
        records = [(f"{name} entry {i + 1}", item) for i, item in enumerate(data)]
        columns = None
    elif suffix == ".jsonl":
        problems = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((f"{name} line {number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    problems.append(f"{name} line {number}: invalid JSON at column {err.colno}: {err.msg}")
        if problems:
            raise DataError(problems)
        columns = None
    else:
        reader = csv.DictReader(text.splitlines())
        columns = reader.fieldnames or []
        records = [(f"{name} line {reader.line_num}", row) for row in reader]
    if not records:
        raise DataError([f"{name}: has no samples"])

    def image_key(keys: list[str]) -> str | None:
        return next((k for k in file_keys if k in keys), None)

    problems: list[str] = []
    if columns is not None:  # CSV: the header decides for every row
        key = image_key(columns)
        missing = [f"an image column (--data_file_keys {','.join(file_keys)})"] if key is None else []
        missing += [f"a {PROMPT_COLUMN!r} column"] if PROMPT_COLUMN not in columns else []
        if missing:
            raise DataError([f"{name}: lacks {' and '.join(missing)}; its columns are {', '.join(columns) or 'none'}"])
        _refuse_video(name, columns, file_keys, key)
    rows: list[Row] = []
    for label, record in records:
        if not isinstance(record, dict):
            problems.append(f"{label}: must be an object with image and {PROMPT_COLUMN!r}, got {type(record).__name__}")
            continue
        key = image_key(list(record))
        missing = [f"an image field (--data_file_keys {','.join(file_keys)})"] if key is None else []
        missing += [f"a {PROMPT_COLUMN!r} field"] if PROMPT_COLUMN not in record else []
        if missing:
            problems.append(f"{label}: lacks {' and '.join(missing)}; its fields are {', '.join(record) or 'none'}")
            continue
        _refuse_video(label, list(record), file_keys, key)
        ref = record[key]
        if not isinstance(ref, str) or not ref.strip():
            problems.append(f"{label}: {key!r} must be a file path, got {ref!r}")
        elif ref.startswith(("http://", "https://")):
            problems.append(f"{label}: {key!r} is a URL ({ref}); download the images and give paths relative to --dataset_base_path")
        else:
            rows.append(Row(f"{label} ({ref})", base / ref, record[PROMPT_COLUMN]))
    if problems:
        raise DataError(problems)
    return rows


def _refuse_video(label: str, columns: list[str], file_keys: list[str], image_key: str | None) -> None:
    others = [k for k in file_keys if k in columns and k != image_key]
    if others:
        raise DataError([f"{label}: file column(s) {', '.join(others)} besides {image_key!r}: Ideogram 4 trains on one "
                         "image per sample (videos are not supported); remove them from --data_file_keys"])


def folder_rows(base: Path) -> list[Row]:
    images = sorted(
        p for p in base.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )
    if not images:
        raise DataError([f"{base}: no images ({', '.join(IMAGE_SUFFIXES)}) and no --dataset_metadata_path"])
    rows, problems = [], []
    for image in images:
        label = image.relative_to(base).as_posix()
        sidecar = next((image.with_suffix(s) for s in (".json", ".txt") if image.with_suffix(s).is_file()), None)
        if sidecar is None:
            problems.append(f"{label}: no caption file ({image.with_suffix('.json').name} or {image.with_suffix('.txt').name})")
            continue
        try:
            rows.append(Row(label, image, sidecar.read_text(encoding="utf-8-sig").strip()))
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"{label}: caption file {sidecar.name} cannot be read as UTF-8 text ({err})")
    if problems:
        raise DataError(problems)
    return rows


# ----- captions ------------------------------------------------------------------------------------

def prepare_caption(value: Any, trigger: str | None = None, trigger_field: str = "high_level_description") -> tuple[str, str]:
    """(text the encoder reads, "caption" | "text"); raises ValueError with the caption's problems."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("the caption is empty")
    try:
        prepared = prepare_prompt(value)
    except InvalidCaptionError as err:
        raise ValueError(str(err)) from None
    except (CaptionSyntaxError, TypeError) as err:
        raise ValueError(f"caption: {err}") from None
    text = prepared.text
    if trigger:
        if prepared.kind == "text":
            text = f"{trigger} {text}"
        else:
            data = json.loads(text)
            *parents, leaf = trigger_field.split(".")
            node = data
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or not isinstance(node.get(leaf), str):
                raise ValueError(f"--trigger_field {trigger_field!r} is not a text field of this caption")
            node[leaf] = f"{trigger} {node[leaf]}"
            text = to_json(data)
    return text, prepared.kind


# ----- images --------------------------------------------------------------------------------------

def bucket_size(width: int, height: int, max_pixels: int, limits: Limits = DEFAULT_LIMITS) -> tuple[int, int]:
    """DiffSynth's dynamic size: shrink to the area cap (and the longest allowed side), never enlarge,
    floor both sides to multiples of 16. Raises ValueError when a side ends below the minimum."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)), limits.max_side / max(width, height))
    w, h = (int(side * scale + 1e-6) // MULTIPLE * MULTIPLE for side in (width, height))
    if min(w, h) < limits.min_side:
        raise ValueError(f"is {width}x{height} pixels, which gives {w}x{h} for training; each side must reach "
                         f"{limits.min_side} pixels (too small, or too elongated)")
    return w, h


def inspect_image(row: Row, c: TrainConfig) -> tuple[int, int, str]:
    """(training width, height, file digest); raises ValueError naming what is wrong with the file."""
    image = open_image(row.image, TRAINING_LIMITS, what=f"image {row.image.name}")
    if min(image.size) < DEFAULT_LIMITS.min_side:
        raise ValueError(f"is {image.width}x{image.height} pixels; training images need at least {DEFAULT_LIMITS.min_side} on each side")
    size = (c.width, c.height) if c.width is not None else bucket_size(image.width, image.height, c.max_pixels)
    return *size, hashlib.sha256(row.image.read_bytes()).hexdigest()


def training_pixels(sample: Sample) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]: the file resized to cover the sample's size and centre-cropped."""
    image = open_image(sample.image, TRAINING_LIMITS, what=f"image {sample.image.name}")
    return image_to_tensor(fit_image(image, sample.width, sample.height))


# ----- the dataset ---------------------------------------------------------------------------------

def load_dataset(c: TrainConfig, count_tokens: Callable[[str], int] | None = None) -> Dataset:
    """Every row read, captioned, decoded and sized; raises DataError listing all problems (or, with
    --skip_bad_samples, drops them with a warning)."""
    rows = read_rows(c)
    problems: list[str] = []
    plain: list[str] = []

    def check(row: Row) -> Sample | str:
        try:
            caption, kind = prepare_caption(row.prompt, c.trigger, c.trigger_field)
            if count_tokens is not None:
                check_token_count(count_tokens(caption))
            width, height, digest = inspect_image(row, c)
        except (ValueError, PromptTooLongError) as err:
            return f"{row.label}: {err}"
        return Sample(row.label, row.image, caption, kind, width, height, digest)

    with ThreadPoolExecutor(max(1, c.dataset_num_workers)) as pool:
        results = list(pool.map(check, rows))
    samples = []
    for result in results:
        if isinstance(result, str):
            problems.append(result)
        else:
            samples.append(result)
            if result.kind == "text":
                plain.append(result.label)
    warnings = []
    if problems and not c.skip_bad_samples:
        raise DataError(problems)
    if problems:
        warnings.append(f"skipped {len(problems)} bad sample(s) (--skip_bad_samples): " + "; ".join(problems[:5]))
        if not samples:
            raise DataError(problems + ["no usable sample is left"])
    if plain:
        warnings.append(f"{len(plain)} of {len(samples)} captions are plain text, not JSON captions (e.g. {plain[0]}); they "
                        "train, but Ideogram 4 follows layout and text far better with structured captions")
    return Dataset(samples, warnings)
