"""The CLI: one real subprocess on a tiny repo, and every bad input through main()."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ideogram_app.generate import main
from ideogram_app.pipeline.metadata import read_image_metadata

ROOT = Path(__file__).resolve().parents[2]
CAPTION = {
    "high_level_description": "A poster",
    "compositional_deconstruction": {"background": "blue", "elements": [{"type": "obj", "desc": "a red circle"}]},
}


@pytest.fixture
def caption_file(tmp_path):
    path = tmp_path / "caption.json"
    path.write_text(json.dumps(CAPTION, indent=2))
    return path


def test_cli_generates_images_and_shows_progress(tiny_repos, caption_file, tmp_path):
    out = tmp_path / "result.png"
    proc = subprocess.run(
        [sys.executable, "-m", "ideogram_app.generate", "--model", str(tiny_repos["fp8"]), "--caption", str(caption_file),
         "--out", str(out), "--size", "80x64", "--preset", "turbo", "--steps", "3", "--seed", "7",
         "--num-images", "2", "--memory", "cpu", "--dtype", "float32"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "denoising" in proc.stderr and "3/3" in proc.stderr  # the tqdm bar
    paths = [tmp_path / "result-0.png", tmp_path / "result-1.png"]
    assert proc.stdout.splitlines() == [f"saved {paths[0]} (seed 7)", f"saved {paths[1]} (seed 8)"]
    for path, seed in zip(paths, (7, 8)):
        assert Image.open(path).size == (80, 64)
        settings = read_image_metadata(path)["settings"]
        assert (settings["seed"], settings["steps"], settings["preset"]) == (seed, 3, "turbo")


def test_cli_rejects_a_bad_size_without_loading_anything(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ideogram_app.generate", "--model", str(tmp_path / "none"), "--caption", "a cat",
         "--out", str(tmp_path / "x.png"), "--size", "1000x1000"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --size: width 1000 is not a multiple of 16; the nearest valid widths are 992 and 1008; "
        "height 1000 is not a multiple of 16; the nearest valid heights are 992 and 1008"
    )


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--size", "64"], "--size: size '64' is not of the form WIDTHxHEIGHT"),
        (["--steps", "0"], "--steps: num_inference_steps must be a positive integer, got 0"),
        (["--steps", "500"], "--steps: 500 denoising steps asked for; choose 1 to 200"),
        (["--size", "100000x100000"], "--size: width 100000 is outside the allowed 64-2048 pixels"),
        (["--cfg", "3", "--std", "-1"], "--std: std must be a positive number"),
        (["--num-images", "0"], "--num-images: num_images is 0; choose 1 to 8"),
        (["--seed", "-4"], "--seed: seed -4 is outside 0..4294967295; use -1 for a random seed"),
        (["--strength", "0.5"], "--strength needs --input-image"),
        (["--input-image", "/missing.png"], "--input-image /missing.png does not exist"),
        (["--input-image", "{caption}", "--strength", "1.5"], "--strength: denoising_strength must be in (0, 1]"),
        (["--caption", "/missing/caption.json"], "caption file /missing/caption.json does not exist"),
        (["--caption", '{"high_level_description": "x",'], "--caption: invalid JSON at line 1"),
        (["--caption", '{"compositional_deconstruction": {"elements": []}}'], "--caption: the caption has 1 error(s)"),
        (["--out", "/missing/folder/out.png"], "--out: folder /missing/folder does not exist"),
        (["--transformer", "/missing/run"], "--transformer /missing/run: no transformer weights there"),
    ],
)
def test_cli_bad_inputs_exit_2_with_a_message(tiny_repos, caption_file, tmp_path, capsys, extra, message):
    extra = [caption_file.as_posix() if a == "{caption}" else a for a in extra]
    argv = ["--model", str(tiny_repos["bf16"]), "--caption", str(caption_file), "--out", str(tmp_path / "o.png"),
            "--memory", "cpu", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "o.png").exists()


def test_cli_unknown_model_exits_1(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nothing" / "here"), "--caption", "a cat", "--out", str(tmp_path / "o.png")]) == 1
    assert "is neither an existing file or folder nor a repo id" in capsys.readouterr().err


def test_cli_too_long_prompt_is_caught_after_the_tokenizer_loads(tiny_repos, tmp_path, capsys):
    argv = ["--model", str(tiny_repos["bf16"]), "--caption", "word " * 3000, "--out", str(tmp_path / "o.png"),
            "--memory", "cpu", "--size", "80x64"]
    assert main(argv) == 2
    assert "Ideogram 4 accepts at most 2048" in capsys.readouterr().err


def test_cli_defaults_are_the_settings_defaults():
    """No second set of defaults: an argument left out is a field left to GenerationSettings."""
    from ideogram_app.generate import build_parser, check_arguments
    from ideogram_app.pipeline.settings import GenerationSettings

    args = build_parser().parse_args(["--model", "m", "--caption", "a cat", "--out", "o.png", "--seed", "3"])
    prompt, settings = check_arguments(args)
    assert prompt == "a cat" and settings == GenerationSettings(seed=3)


def test_cli_transformer_takes_a_full_fine_tunes_output(tiny_repos, caption_file, tmp_path):
    """--transformer RUN: the output folder of a 2-step full fine-tune (the trainer on the tiny repo)
    is the conditional DiT; the image differs from the base model's, and its metadata names the folder."""
    from ideogram_app.train.cli import main as train
    from tests.train.conftest import base_args, write_dataset

    run = tmp_path / "full"
    metadata = write_dataset(tmp_path / "data")
    assert train(base_args(tiny_repos["bf16"], metadata, run, tmp_path / "cache", "--trainable_models", "dit",
                           "--max_steps", "2", "--learning_rate", "1e-3")) == 0
    common = ["--model", str(tiny_repos["bf16"]), "--caption", str(caption_file), "--size", "64x64", "--preset", "turbo",
              "--steps", "3", "--seed", "5", "--memory", "cpu", "--dtype", "float32"]
    assert main([*common, "--out", str(tmp_path / "base.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "tuned.png"), "--transformer", str(run)]) == 0
    base, tuned = (np.asarray(Image.open(tmp_path / name)) for name in ("base.png", "tuned.png"))
    assert not np.array_equal(base, tuned)
    assert read_image_metadata(tmp_path / "tuned.png")["settings"]["model"] == (
        f"{tiny_repos['bf16']} (transformer: {run / 'transformer'})")
