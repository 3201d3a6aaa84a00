"""Bad settings and bad data are named precisely (flag, file, row, field) before any model loads, and
nothing is written to the output folder. Plus the data rules: metadata formats, sidecar folders, the
per-image size rule (DiffSynth's), triggers, the settings list the CLI and the Train tab share."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ideogram_app.train.cli import main
from ideogram_app.train.config import BY_NAME, SETTINGS, ConfigError, build_parser, config_from_values, parse_args
from ideogram_app.train.data import DataError, bucket_size, load_dataset
from tests.train.conftest import caption, lora_args, write_dataset

# The flags of DiffSynth's Ideogram 4 train.py that the issue lists, all accepted with their names.
DIFFSYNTH_FLAGS = """dataset_base_path dataset_metadata_path dataset_repeat dataset_num_workers data_file_keys model_paths
model_id_with_origin_paths extra_inputs fp8_models learning_rate num_epochs trainable_models find_unused_parameters weight_decay
task output_path remove_prefix_in_ckpt save_steps lora_base_model lora_target_modules lora_rank lora_checkpoint
preset_lora_path preset_lora_model use_gradient_checkpointing use_gradient_checkpointing_offload gradient_accumulation_steps
height width max_pixels num_frames tokenizer_path""".split()
OURS = """model seed max_steps batch_size lora_alpha lr_scheduler lr_warmup_steps max_grad_norm optimizer resume keep_checkpoints
cache_dir validation_prompts validation_steps validation_preset trigger trigger_field save_format""".split()


@pytest.fixture
def data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


def fails(args: list[str], capsys, output: Path) -> str:
    """Run the CLI expecting exit status 2 and an untouched output folder; return stderr."""
    assert main(args) == 2
    assert not output.exists(), f"{output} was written: {list(output.rglob('*'))}"
    return capsys.readouterr().err


def test_every_listed_flag_is_a_setting_and_the_parser_reads_them():
    assert set(DIFFSYNTH_FLAGS) <= {s.name for s in SETTINGS if s.origin == "diffsynth"}
    assert set(OURS) <= {s.name for s in SETTINGS if s.origin == "ours"}
    parser_flags = {a.dest for a in build_parser()._actions}
    assert {s.name for s in SETTINGS} <= parser_flags
    assert BY_NAME["lora_target_modules"].default == "attention.qkv,attention.o,feed_forward.w1,feed_forward.w2,feed_forward.w3,adaln_modulation"


def test_diffsynth_lora_command_line_parses_unchanged(tmp_path, data):
    """The flags of DiffSynth's lora/Ideogram-4-bf16-repackage.sh, as written there (plus a local model)."""
    config, warnings = parse_args([
        "--dataset_base_path", str(data.parent), "--dataset_metadata_path", str(data), "--max_pixels", "1048576",
        "--dataset_repeat", "100", "--model", "some/repo", "--learning_rate", "1e-4", "--num_epochs", "5",
        "--remove_prefix_in_ckpt", "pipe.dit.", "--output_path", str(tmp_path / "out"), "--lora_base_model", "dit",
        "--lora_target_modules", "attention.qkv,attention.o,feed_forward.w1,feed_forward.w2,feed_forward.w3,adaln_modulation",
        "--lora_rank", "32", "--use_gradient_checkpointing", "--find_unused_parameters", "--data_file_keys", "image",
        "--enable_tensorboard_log",
    ])
    assert config.dataset_repeat == 100 and config.lora_rank == 32 and config.use_gradient_checkpointing
    assert warnings == ["--enable_tensorboard_log is ignored: loggers: metrics go to metrics.jsonl in --output_path"]


@pytest.mark.parametrize("extra, flag, words", [
    (["--lr_scheduler", "bogus"], "--lr_scheduler", "'bogus' is not one of constant, linear, cosine"),
    (["--trainable_models", "text_encoder"], "--trainable_models", "only the conditional DiT ('dit') can be trained"),
    (["--num_frames", "81"], "--num_frames", "Ideogram 4 is an image model"),
    (["--extra_inputs", "max_timestep_boundary"], "--extra_inputs", "takes no extra per-sample inputs"),
    (["--lora_rank", "four"], "--lora_rank", "must be a whole number, got 'four'"),
    (["--height", "1000", "--width", "1024"], "--height", "must be a multiple of 16"),
    (["--width", "1024"], "--height", "--height and --width go together"),
    (["--quant_options", "dit:bitsandbytes_nf4"], "--quant_options", "is not supported by this trainer"),
    (["--fp8_models", "vae"], "--fp8_models", "is not one of dit, text_encoder"),
    (["--validation_steps", "10"], "--validation_steps", "needs --validation_prompts"),
])
def test_bad_flag_values_are_named(tiny_repos, data, tmp_path, capsys, extra, flag, words):
    err = fails(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache", *extra), capsys, tmp_path / "out")
    assert f"error: {flag}: " in err and words in err


def test_all_flag_problems_are_reported_together_for_the_train_tab():
    with pytest.raises(ConfigError) as info:
        config_from_values({"dataset_base_path": "", "learning_rate": -1, "lora_rank": 0, "nonsense": 1})
    flags = [flag for flag, _ in info.value.problems]
    assert flags == ["--nonsense", "--lora_rank", "--learning_rate", "--dataset_base_path", "--model", "--lora_base_model"]


def test_corrupt_truncated_and_tiny_images_are_named(tiny_repos, data, tmp_path, capsys):
    (data.parent / "img1.png").write_bytes(b"this is not a png")
    raw = (data.parent / "img2.png").read_bytes()
    (data.parent / "img2.png").write_bytes(raw[: len(raw) // 2])
    Image.new("RGB", (40, 64)).save(data.parent / "img3.png")
    err = fails(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache"), capsys, tmp_path / "out")
    assert "3 problem(s) in the dataset" in err
    assert "metadata.jsonl line 2 (img1.png): image img1.png" in err and "is not an image Pillow can read" in err
    assert "metadata.jsonl line 3 (img2.png): image img2.png" in err
    assert "metadata.jsonl line 4 (img3.png): is 40x64 pixels; training images need at least 64 on each side" in err


def test_skip_bad_samples_drops_them_with_a_warning(tiny_repos, data, tmp_path, capsys):
    (data.parent / "img1.png").write_bytes(b"broken")
    config, _ = parse_args(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache", "--skip_bad_samples"))
    dataset = load_dataset(config)
    assert [s.image.name for s in dataset.samples] == ["img0.png", "img2.png", "img3.png"]
    assert "skipped 1 bad sample(s)" in dataset.warnings[0] and "img1.png" in dataset.warnings[0]


def test_caption_verifier_errors_are_listed_per_row(tiny_repos, tmp_path, capsys):
    bad = caption(2)
    bad["compositional_deconstruction"]["elements"][0]["bbox"] = [100, 100, 1200, 50]
    bad["mood"] = "happy"
    data = write_dataset(tmp_path / "data", captions=[caption(0), caption(1), bad, "{\"high_level_description\": "])
    err = fails(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache"), capsys, tmp_path / "out")
    assert "metadata.jsonl line 3 (img2.png): the caption has" in err
    assert "compositional_deconstruction.elements[0].bbox" in err and "mood" in err
    assert "metadata.jsonl line 4 (img3.png): caption: invalid JSON at line 1" in err


def test_missing_field_in_a_jsonl_row_is_named(tiny_repos, tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace('"prompt"', '"caption"')
    data.write_text("\n".join(lines) + "\n")
    err = fails(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache"), capsys, tmp_path / "out")
    assert "metadata.jsonl line 2: lacks a 'prompt' field; its fields are image, caption" in err


def test_missing_column_is_named(tiny_repos, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", fmt="csv")
    data.write_text(data.read_text().replace("prompt", "caption", 1))
    err = fails(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache"), capsys, tmp_path / "out")
    assert "metadata.csv: lacks a 'prompt' column; its columns are image, caption" in err


def test_unknown_lora_target_is_named_before_anything_is_written(tiny_repos, data, tmp_path, capsys):
    args = lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache", "--lora_target_modules", "q,k,v,o,ffn.0")
    err = fails(args, capsys, tmp_path / "out")
    assert "--lora_target_modules: q, k, v, ffn.0 match no Linear of the DiT" in err


def test_an_existing_run_is_not_overwritten(tiny_repos, data, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text("{}")
    assert main(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "cache")) == 2
    assert "already holds a run; pass --resume latest" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run.json"]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_metadata_formats_give_the_same_samples(tiny_repos, tmp_path, fmt):
    data = write_dataset(tmp_path / fmt, fmt=fmt)
    config, _ = parse_args(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "c"))
    samples = load_dataset(config).samples
    assert [(s.image.name, s.width, s.height, s.kind) for s in samples] == [
        ("img0.png", 64, 64, "caption"), ("img1.png", 80, 64, "caption"), ("img2.png", 64, 64, "caption"), ("img3.png", 80, 64, "caption")]
    # Canonical compact JSON, whatever the file held (escaped string in CSV, an object in JSON).
    assert samples[0].caption == json.dumps(caption(0), separators=(",", ":"))


def test_plain_folder_with_sidecars_trigger_and_plain_text_warning(tiny_repos, tmp_path):
    folder = tmp_path / "folder"
    write_dataset(folder)
    (folder / "metadata.jsonl").unlink()
    for i in range(3):
        (folder / f"img{i}.json").write_text(json.dumps(caption(i), indent=2))
    (folder / "img3.txt").write_text("a plain text caption\n")
    config, _ = parse_args(lora_args(tiny_repos["bf16"], folder, tmp_path / "out", tmp_path / "c", "--trigger", "ohwx"))
    dataset = load_dataset(config)
    assert [s.kind for s in dataset.samples] == ["caption"] * 3 + ["text"]
    assert json.loads(dataset.samples[1].caption)["high_level_description"] == "ohwx Training image number 1"
    assert dataset.samples[3].caption == "ohwx a plain text caption"
    assert "1 of 4 captions are plain text" in dataset.warnings[0] and "img3.png" in dataset.warnings[0]
    (folder / "img3.txt").unlink()
    with pytest.raises(DataError, match=r"img3.png: no caption file \(img3.json or img3.txt\)"):
        load_dataset(config)


def test_dynamic_size_is_diffsynths_rule():
    """Shrink to the area cap, never enlarge, floor both sides to multiples of 16."""
    assert bucket_size(4000, 3000, 1024 * 1024) == (1168, 880)  # scale sqrt(1M/12M): 1182.4 x 886.8
    assert bucket_size(4032, 3024, 1024 * 1024) == (1168, 880)  # the same bucket
    assert bucket_size(700, 500, 1024 * 1024) == (688, 496)  # small: floored, not enlarged
    assert bucket_size(1024, 1024, 1024 * 1024) == (1024, 1024)
    assert bucket_size(6000, 1000, 1024 * 1024) == (2048, 336)  # the long side stops at 2048
    with pytest.raises(ValueError, match="too elongated"):
        bucket_size(5000, 100, 1024 * 1024)


def test_fixed_size_applies_to_every_image(tiny_repos, data, tmp_path):
    config, _ = parse_args(lora_args(tiny_repos["bf16"], data, tmp_path / "out", tmp_path / "c", "--height", "64", "--width", "64"))
    assert {s.size for s in load_dataset(config).samples} == {(64, 64)}


def test_shipped_accelerate_configs_load_and_never_ask_for_autocast():
    from importlib.resources import files

    from accelerate.commands.config.config_args import load_config_from_file

    folder = files("ideogram_app.train") / "accelerate_configs"
    for name, kind in (("ddp_lora.yaml", "MULTI_GPU"), ("fsdp_full.yaml", "FSDP")):
        config = load_config_from_file(str(folder / name))
        assert config.distributed_type.value == kind and config.mixed_precision == "no"
    assert load_config_from_file(str(folder / "fsdp_full.yaml")).fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Block"
