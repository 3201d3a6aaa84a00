"""A tiny training set on disk and helpers to run the trainer on the shared tiny repos.

Four real PNG files (two 64x64, two 80x64 so there are two size buckets) with structured captions in
a DiffSynth metadata file; every run uses fp32 compute on the CPU so results can be compared exactly.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(64, 64), (80, 64), (64, 64), (80, 64)]  # (width, height)


def caption(index: int) -> dict:
    return {
        "high_level_description": f"Training image number {index}",
        "compositional_deconstruction": {
            "background": "random coloured noise",
            "elements": [{"type": "obj", "bbox": [100, 100, 600, 700], "desc": f"a blob {index}"}],
        },
    }


def write_images(folder: Path, seed: int = 0) -> list[str]:
    """Smooth random images (low-frequency noise): something a tiny LoRA can learn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for index, (width, height) in enumerate(SIZES):
        small = rng.random((height // 16, width // 16, 3)) * 255
        image = Image.fromarray(small.astype("uint8")).resize((width, height), Image.BILINEAR)
        name = f"img{index}.png"
        image.save(folder / name)
        names.append(name)
    return names


def write_dataset(folder: Path, fmt: str = "jsonl", captions=None) -> Path:
    """Images plus a metadata file (.jsonl, .json or .csv); returns the metadata path."""
    names = write_images(folder)
    captions = captions or [caption(i) for i in range(len(names))]
    rows = [{"image": n, "prompt": copy.deepcopy(c)} for n, c in zip(names, captions)]
    path = folder / f"metadata.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=1))
    else:
        import csv

        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "prompt"])
            writer.writeheader()
            for r in rows:
                writer.writerow({"image": r["image"], "prompt": json.dumps(r["prompt"]) if isinstance(r["prompt"], dict) else r["prompt"]})
    return path


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """The shared training set (read only): its metadata file; images beside it."""
    return write_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One feature cache for the whole session: later runs reuse what earlier ones computed."""
    return tmp_path_factory.mktemp("feature_cache")


def base_args(repo: Path, data: Path, output: Path, cache: Path, *extra: str) -> list[str]:
    """`data` is a metadata file (images beside it) or a folder of images with caption sidecars."""
    data = Path(data)
    source = ["--dataset_base_path", str(data)] if data.is_dir() else [
        "--dataset_base_path", str(data.parent), "--dataset_metadata_path", str(data)]
    return ["--model", str(repo), *source, "--output_path", str(output), "--cache_dir", str(cache), "--dtype", "float32", *extra]


def lora_args(repo, metadata, output, cache, *extra: str) -> list[str]:
    return base_args(repo, metadata, output, cache, "--lora_base_model", "dit", "--lora_rank", "4", "--learning_rate", "1e-3", *extra)


def prepared(args: list[str]):
    """A run set up in this process exactly as the CLI sets it up (checks, model, caches), not yet trained."""
    from accelerate import Accelerator

    from ideogram_app.train.config import as_dict, parse_args
    from ideogram_app.train.loop import Run, check_inputs, prepare_run
    from ideogram_app.train.records import RunRecord

    config, _ = parse_args(args)
    output = Path(config.output_path)
    run = Run(config, as_dict(config), Accelerator(mixed_precision="no"), output, RunRecord(output, {}, False), check_inputs(config, 1))
    prepare_run(run)
    return run


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_subprocess(args: list[str], launcher: list[str] | None = None, **kwargs) -> subprocess.Popen:
    command = (launcher or [sys.executable]) + ["-m", "ideogram_app.train", *args]
    return subprocess.Popen(command, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run_subprocess(args: list[str], launcher: list[str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    process = train_subprocess(args, launcher)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
