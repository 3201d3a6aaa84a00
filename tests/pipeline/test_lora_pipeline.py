"""LoRAs through the pipeline and the CLI on the tiny repos: what changes the image, what restores
it bit for bit, and what the PNG metadata records."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ideogram_app.lora import RejectedLora
from ideogram_app.pipeline.metadata import read_image_metadata
from ideogram_app.pipeline.pipeline import Ideogram4Pipeline
from tests.lora.loras import fused_truth, write_comfyui

FAST = dict(width=80, height=64, preset="turbo", num_inference_steps=3, seed=4)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipe(tiny_repos):
    return Ideogram4Pipeline.from_pretrained(str(tiny_repos["bf16"]), torch_dtype=torch.float32, memory="cpu")


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return (write_comfyui(folder / "style.safetensors", fused_truth(seed=3, rank=4, alpha=4.0)),
            write_comfyui(folder / "other.safetensors", fused_truth(seed=8, rank=2, alpha=2.0)))


def array(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_a_lora_changes_the_image_and_unloading_restores_it_exactly(pipe, lora_files):
    base = array(pipe("a cat", **FAST))
    report = pipe.load_lora(lora_files[0], scale=1.0)
    try:
        assert report.name == "style" and len(report.matched) > 0
        with_lora = pipe("a cat", **FAST)
        assert np.abs(array(with_lora) - base).mean() > 1.0
        pipe.set_lora_scale("style", 0.0)
        assert np.array_equal(array(pipe("a cat", **FAST)), base)  # scale 0 is the base
        pipe.set_lora_scale("style", 0.5)
        half = array(pipe("a cat", **FAST))
        assert 0 < np.abs(half - base).mean() < np.abs(array(with_lora) - base).mean()
    finally:
        pipe.unload_lora()
    assert pipe.loras == []
    assert np.array_equal(array(pipe("a cat", **FAST)), base)


def test_metadata_records_each_lora_with_its_hash(pipe, lora_files):
    pipe.load_lora(lora_files[0], scale=0.8)
    pipe.load_lora(lora_files[1], scale=0.3, target="unconditional_transformer")
    try:
        record = read_image_metadata(pipe("a cat", **FAST))
    finally:
        pipe.unload_lora()
    expected = [
        {"name": "style", "file": "style.safetensors", "sha256": hashlib.sha256(lora_files[0].read_bytes()).hexdigest(),
         "scale": 0.8, "target": "transformer", "merged": False},
        {"name": "other", "file": "other.safetensors", "sha256": hashlib.sha256(lora_files[1].read_bytes()).hexdigest(),
         "scale": 0.3, "target": "unconditional_transformer", "merged": False},
    ]
    assert record["settings"]["loras"] == expected


def test_diffsynth_spelling_and_merged_loading_give_the_same_image(pipe, lora_files):
    pipe.load_lora(pipe.dit, lora_files[0], alpha=0.7)
    try:
        assert pipe.loras[0]["target"] == "transformer" and pipe.loras[0]["scale"] == 0.7
        unmerged = array(pipe("a cat", **FAST))
    finally:
        pipe.unload_lora()
    pipe.load_lora(lora_files[0], scale=0.7, merge=True)
    try:
        merged = array(pipe("a cat", **FAST))
    finally:
        pipe.unload_lora()
    assert np.abs(merged - unmerged).max() <= 1


def test_bad_lora_requests_are_refused_before_the_model_changes(pipe, lora_files, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        pipe.load_lora(junk)
    with pytest.raises(ValueError, match="LoRA target 'vae' is unknown"):
        pipe.load_lora(lora_files[0], target="vae")
    pipe.load_lora(lora_files[0])
    try:
        with pytest.raises(ValueError, match="a LoRA named 'style' is already loaded"):
            pipe.load_lora(lora_files[0], target="unconditional_transformer")
        with pytest.raises(KeyError, match="no LoRA named 'nope' is loaded"):
            pipe.set_lora_scale("nope", 1.0)
    finally:
        pipe.unload_lora()
    assert pipe.loras == []
    assert issubclass(RejectedLora, ValueError)


def test_cli_applies_loras_and_records_them(tiny_repos, lora_files, tmp_path):
    caption = tmp_path / "c.txt"
    caption.write_text("a cat")
    runs = {}
    for label, extra in (("base", []), ("lora", ["--lora", f"{lora_files[0]}:0.9", "--lora", str(lora_files[1])])):
        out = tmp_path / f"{label}.png"
        proc = subprocess.run(
            [sys.executable, "-m", "ideogram_app.generate", "--model", str(tiny_repos["bf16"]), "--caption", str(caption),
             "--out", str(out), "--size", "80x64", "--preset", "turbo", "--steps", "3", "--seed", "4",
             "--dtype", "float32", "--memory", "cpu", *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        runs[label] = out
    assert np.abs(array(Image.open(runs["lora"]).convert("RGB")) - array(Image.open(runs["base"]).convert("RGB"))).mean() > 1.0
    loras = read_image_metadata(runs["lora"])["settings"]["loras"]
    assert [(r["file"], r["scale"]) for r in loras] == [("style.safetensors", 0.9), ("other.safetensors", 1.0)]
    assert "loras" not in read_image_metadata(runs["base"])["settings"]


def test_cli_names_a_missing_or_broken_lora(tiny_repos, tmp_path, capsys):
    from ideogram_app.generate import main

    base = ["--model", str(tiny_repos["bf16"]), "--caption", "a cat", "--out", str(tmp_path / "o.png"), "--memory", "cpu"]
    assert main([*base, "--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "--lora: " in capsys.readouterr().err
    assert main([*base, "--lora", f"{tmp_path / 'x.safetensors'}:abc"]) == 2
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    assert main([*base, "--lora", str(junk), "--size", "80x64", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--lora" in err and "junk.safetensors" in err
    assert not (tmp_path / "o.png").exists()


def test_an_unconditional_lora_serves_the_negative_pass_with_one_dit(tiny_repos, lora_files):
    """Oracle: the same weights arranged as two DiTs — the conditional DiT with the conditional LoRA,
    and a copy of it holding only the unconditional LoRA as the unconditional DiT — draw the same image."""
    import copy
    import warnings

    from ideogram_app.lora import apply_lora

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one resident DiT by choice: no "not the trained configuration" warning
        single = Ideogram4Pipeline.from_pretrained(str(tiny_repos["bf16"]), torch_dtype=torch.float32, memory="cpu",
                                                   unconditional="lora")
    assert single.unconditional_transformer is None
    plain = array(single("a cat", **FAST))
    single.load_lora(lora_files[0], scale=0.8)
    single.load_lora(lora_files[1], target="unconditional_lora", scale=1.5)
    image = single("a cat", **FAST)
    assert [r["target"] for r in read_image_metadata(image)["settings"]["loras"]] == ["transformer", "unconditional_lora"]

    pair = Ideogram4Pipeline.from_pretrained(str(tiny_repos["bf16"]), torch_dtype=torch.float32, memory="cpu",
                                             unconditional="lora")
    pair.unconditional_transformer = copy.deepcopy(pair.transformer)
    apply_lora(pair.unconditional_transformer, lora_files[1], scale=1.5)
    pair.load_lora(lora_files[0], scale=0.8)
    assert np.array_equal(array(image), array(pair("a cat", **FAST)))
    assert np.abs(array(image) - plain).mean() > 1.0
    with pytest.raises(ValueError, match="unconditional='lora'"):
        pair.load_lora(lora_files[1], target="unconditional_lora", name="again")
