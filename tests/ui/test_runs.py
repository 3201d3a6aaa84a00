"""ui/runs.py against real files and real trainer processes (the tiny repo, 80x64 images, rank 2, CPU).

Datasets: uploads and zips checked before anything is written, canonical sidecars that the caption
core verifies clean, the four caption statuses. Runs: the command line comes from the trainer's
own SETTINGS; a run finishes with its LoRA; SIGTERM stops it with a checkpoint and Resume finishes
it; a new manager (an app restart) lists the runs from their folders; a corrupt image fails with
the trainer's own message; the GPU lease is held while a run lives.
"""
from __future__ import annotations

import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ideogram_app.caption import verify
from ideogram_app.train.config import ConfigError
from ideogram_app.ui import runs

CAPTION = {"high_level_description": "A flat test image with one word.",
           "compositional_deconstruction": {"background": "smooth colour noise", "elements": [
               {"type": "text", "bbox": [100, 150, 500, 850], "text": "Hi", "desc": "a short white word"}]}}


def png_bytes(seed: int, size=(80, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    small = (rng.random((size[1] // 16, size[0] // 16, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def train_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IDEOGRAM_TRAIN_DIR", str(tmp_path / "training"))
    return tmp_path / "training"


def uploads(tmp_path: Path, count: int = 3) -> list[tuple[str, Path]]:
    found = []
    for i in range(count):
        path = tmp_path / f"upload-{i}.png"
        path.write_bytes(png_bytes(i))
        found.append((f"photo {i}.png", path))
    return found


def captioned_dataset(tmp_path: Path, name: str = "set") -> Path:
    folder = runs.create_dataset("local", name, uploads(tmp_path))
    images = runs.dataset_images(folder)
    runs.write_caption(images[0], json.dumps(CAPTION, indent=2))  # pretty input, canonical on disk
    assert runs.copy_caption_to_all(folder, json.dumps(CAPTION), source=images[0]) == 2
    return folder


def test_datasets_uploads_zips_and_caption_status(tmp_path):
    folder = runs.create_dataset("local", "first", uploads(tmp_path))
    images = runs.dataset_images(folder)
    assert [p.name for p in images] == ["photo_0.png", "photo_1.png", "photo_2.png"]  # names flattened and made safe
    assert {runs.caption_status(p).status for p in images} == {runs.MISSING}
    runs.write_caption(images[0], json.dumps(CAPTION, indent=2))
    text = images[0].with_suffix(".json").read_text(encoding="utf-8")
    assert verify(text) == [] and json.loads(text) == CAPTION  # canonical (compact, key order) and clean
    runs.write_caption(images[1], "a photo of noise")
    assert images[1].with_suffix(".txt").read_text() == "a photo of noise"
    images[2].with_suffix(".json").write_text('{"compositional_deconstruction": {"elements": []}}')
    assert [runs.caption_status(p).status for p in images] == [runs.CLEAN, runs.PLAIN, runs.ERRORS]
    assert "background" in runs.caption_status(images[2]).detail
    runs.write_caption(images[1], json.dumps(CAPTION))  # a JSON caption replaces the .txt sidecar
    assert not images[1].with_suffix(".txt").exists() and runs.caption_status(images[1]).status == runs.CLEAN

    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("nested/a.png", png_bytes(5))
        handle.writestr("nested/a.json", json.dumps(CAPTION))
        handle.writestr("__MACOSX/._a.png", b"junk")
        handle.writestr("../evil.sh", b"#!/bin/sh")
    zipped = runs.create_dataset("local", None, [("set.zip", archive)])
    assert sorted(p.name for p in zipped.iterdir()) == ["a.json", "a.png"]
    assert runs.caption_status(zipped / "a.png").status == runs.CLEAN
    assert sorted(runs.list_datasets("local")) == sorted([str(folder), str(zipped)])


def test_bad_uploads_are_refused_with_nothing_written(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(runs.TrainFilesError, match="bad.png is not an image"):
        runs.create_dataset("local", "broken", [*uploads(tmp_path), ("bad.png", bad)])
    assert not (runs.datasets_dir("local") / "broken").exists()
    with pytest.raises(runs.TrainFilesError, match="dataset name '../x'"):
        runs.create_dataset("local", "../x", uploads(tmp_path))
    script = tmp_path / "run.sh"
    script.write_text("echo")
    with pytest.raises(runs.TrainFilesError, match="run.sh: only images"):
        runs.create_dataset("local", "script", [("run.sh", script)])
    with pytest.raises(runs.TrainFilesError, match="is not one of your datasets"):
        runs.resolve_dataset("local", "/etc")


def test_the_command_line_comes_from_the_trainer_settings(tmp_path, tiny_repo):
    folder = captioned_dataset(tmp_path)
    argv = runs.train_command({"model": str(tiny_repo), "dataset_base_path": str(folder), "lora_base_model": "dit",
                               "lora_rank": 2, "learning_rate": 0.001, "use_gradient_checkpointing": True,
                               "batch_size": 1})  # batch_size 1 is the default: not written
    assert argv[:3] == [sys.executable, "-m", "ideogram_app.train"]
    assert argv[3:] == ["--dataset_base_path", str(folder), "--model", str(tiny_repo), "--lora_base_model", "dit",
                        "--lora_rank", "2", "--learning_rate", "0.001", "--use_gradient_checkpointing"]
    with pytest.raises(ConfigError) as refused:
        runs.train_command({"model": str(tiny_repo), "dataset_base_path": str(folder), "lora_rank": "two"})
    assert dict(refused.value.problems)["--lora_rank"] == "must be a whole number, got 'two'"


def wait_until(predicate, timeout: float = 90, what: str = "the run"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not get there in {timeout} s")
        time.sleep(0.1)


def settings(repo: Path, folder: Path, cache: Path, steps: int) -> dict:
    return {"model": str(repo), "dataset_base_path": str(folder), "lora_base_model": "dit", "lora_rank": 2,
            "learning_rate": 1e-3, "max_steps": steps, "dtype": "float32", "cache_dir": str(cache),
            "save_steps": 3}


def test_stop_resume_restart_and_the_lease(tmp_path, tiny_repo):
    folder = captioned_dataset(tmp_path)
    manager = runs.RunManager(runs.GpuLease())
    info = manager.start("local", "long", settings(tiny_repo, folder, tmp_path / "cache", 100_000))
    assert info.command.startswith("python -m ideogram_app.train --dataset_base_path")
    assert manager.lease.holder() == "long"
    cursor = runs.MetricsCursor()
    seen: list[dict] = []

    def more_rows():
        nonlocal cursor
        rows, cursor, _ = runs.read_new_metrics(info.folder, cursor)
        seen.extend(rows)
        return len(seen) >= 4

    wait_until(more_rows)
    assert [row["step"] for row in seen] == list(range(1, len(seen) + 1))  # incremental reads: no gaps, no repeats
    with pytest.raises(runs.TrainFilesError, match="is running; stop it first"):
        manager.delete(info.folder)
    manager.stop(info.folder)
    wait_until(lambda: not manager.alive(info.folder))
    stopped = manager.info(info.folder)
    assert stopped.status == "stopped" and stopped.checkpoints and stopped.lora is not None
    assert manager.lease.holder() is None

    manager.resume(info.folder, max_steps=stopped.step + 2)
    wait_until(lambda: not manager.alive(info.folder))
    finished = manager.info(info.folder)
    assert finished.status == "finished", finished.message
    assert finished.step == stopped.step + 2 and finished.final_loss is not None

    restarted = runs.RunManager(runs.GpuLease())  # a new app process: nothing in memory
    (listed,) = restarted.list("local")
    assert (listed.name, listed.status, listed.lora, listed.step) == ("long", "finished", finished.lora, finished.step)
    assert restarted.delete(info.folder) == "long" and restarted.list("local") == []


def test_a_failing_run_reports_the_trainer_message(tmp_path, tiny_repo):
    folder = captioned_dataset(tmp_path)
    (folder / "broken.png").write_bytes(png_bytes(9)[:60])  # truncated
    runs.write_caption(folder / "broken.png", json.dumps(CAPTION))
    manager = runs.RunManager(runs.GpuLease())
    info = manager.start("local", None, settings(tiny_repo, folder, tmp_path / "cache", 4))
    wait_until(lambda: not manager.alive(info.folder))
    failed = manager.info(info.folder)
    assert failed.status == "failed" and "broken.png" in failed.message, failed.message
    assert "error:" in manager.log_tail(info.folder)


def test_metrics_are_read_in_bounded_chunks(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(1, 2001)))
    rows, cursor, reset = runs.read_new_metrics(tmp_path, runs.MetricsCursor(), chunk=4096)
    assert reset and 0 < len(rows) < 200 and rows[-1]["step"] == 2000  # the tail, from a whole line
    with open(path, "a") as handle:
        handle.write(json.dumps({"step": 2001, "loss": 0.5}) + "\n" + '{"step": 2002, "lo')  # a line being written
    rows, cursor, reset = runs.read_new_metrics(tmp_path, cursor, chunk=4096)
    assert not reset and [r["step"] for r in rows] == [2001]
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")  # a resumed run dropped rows: start over
    rows, cursor, reset = runs.read_new_metrics(tmp_path, cursor, chunk=4096)
    assert reset and [r["step"] for r in rows] == [1]


def test_diffsynth_metadata_files_become_sidecar_captions(tmp_path):
    images = uploads(tmp_path)
    csv_file = tmp_path / "metadata.csv"
    csv_file.write_text('image,prompt\nsub/photo 0.png,"a photo, of noise"\nphoto 1.png,' +
                        '"' + json.dumps(CAPTION).replace('"', '""') + '"\n', encoding="utf-8")
    folder = runs.create_dataset("local", "meta", [*images, ("metadata.csv", csv_file)])
    assert not (folder / "metadata.csv").exists()  # read, not copied (the trainer reads the folder's sidecars)
    first, second, third = runs.dataset_images(folder)
    assert first.with_suffix(".txt").read_text(encoding="utf-8") == "a photo, of noise"
    text = second.with_suffix(".json").read_text(encoding="utf-8")
    assert verify(text) == [] and json.loads(text) == CAPTION  # a caption object, written canonical
    assert runs.caption_status(third).status == runs.MISSING

    # a .jsonl and a .json list, added to the existing dataset; a .json object stays a caption sidecar
    lines = tmp_path / "more.jsonl"
    lines.write_text(json.dumps({"image": "photo_2.png", "prompt": CAPTION}) + "\n", encoding="utf-8")
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"image": "photo 0.png", "prompt": "replaced"}]), encoding="utf-8")
    assert runs.import_files(folder, [("more.jsonl", lines), ("list.json", listed)]) == ["list.json", "more.jsonl"]
    assert runs.caption_status(third).status == runs.CLEAN
    assert first.with_suffix(".txt").read_text(encoding="utf-8") == "replaced"

    # refusals name the file and row, and write nothing
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "photo_1.png", "prompt": "fine"}) + "\n" +
                   json.dumps({"image": "nope.png", "prompt": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(runs.TrainFilesError, match=r"^bad.jsonl line 2 \(nope.png\): no image 'nope.png'"):
        runs.import_files(folder, [("bad.jsonl", bad)])
    assert runs.caption_status(second).status == runs.CLEAN  # row 1 was not written either
    columns = tmp_path / "cols.csv"
    columns.write_text("file,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(runs.TrainFilesError, match=r"^cols.csv: lacks an image column .* and a 'prompt' column"):
        runs.import_files(folder, [("cols.csv", columns)])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"image": "photo_1.png", "prompt": '{"high_level_description": '}) + "\n")
    with pytest.raises(runs.TrainFilesError, match=r"broken.jsonl line 1 \(photo_1.png\): "):
        runs.import_files(folder, [("broken.jsonl", broken)])


def test_the_estimate_line_reads_the_measured_table():
    h200 = ("NVIDIA H200", 139.8)
    quick = {"max_steps": 1000, "max_pixels": 1024 * 1024, "batch_size": 1}
    # benchmarks/RESULTS.md, "Training on one and two GPUs": bf16 + checkpointing 0.724 s/step, 21.00 GiB
    line = runs.estimate_line({**quick, "use_gradient_checkpointing": True}, h200)
    assert line == ("NVIDIA H200 (140 GiB): about 21.0 GiB peak — fits; 0.72 s/step (measured at 1024², batch 1, "
                    "rank 32 on an H200); 1000 steps ≈ 12 min at your size and batch (time scales with pixels).")
    fp8 = {**quick, "use_gradient_checkpointing": True, "fp8_models": "dit", "use_gradient_checkpointing_offload": True}
    assert "about 11.7 GiB peak — fits; 0.96 s/step" in runs.estimate_line(fp8, ("RTX 4080", 16.0))
    assert "about 54.5 GiB peak — does NOT fit" in runs.estimate_line(quick, ("RTX 4090", 24.0))
    half = runs.estimate_line({**quick, "use_gradient_checkpointing": True, "max_pixels": 512 * 512}, h200)
    assert "1000 steps ≈ 3 min" in half  # 0.724 s × 1000 / 4 = 181 s
    assert "no measurement" in runs.estimate_line({**quick, "fp8_models": "dit"}, h200)
    assert runs.estimate_line(quick, None).startswith("CPU: tiny models only")


def test_chosen_gpus_become_the_environment_or_an_accelerate_launch(tmp_path):
    """0 GPUs: the plain command; 1: CUDA_VISIBLE_DEVICES in the subprocess's environment; 2: accelerate's
    launcher with the shipped config, its flags checked by accelerate's own argument parser."""
    from accelerate.commands.launch import launch_command_parser

    values = {"dataset_base_path": str(tmp_path), "model": "some/model", "lora_base_model": "dit",
              "output_path": str(tmp_path / "run")}
    argv = runs.train_command(values)
    assert argv[:3] == [sys.executable, "-m", "ideogram_app.train"]
    assert runs.launch_plan(argv, values, runs.check_gpus([], 2)) == (argv, {})
    one, env = runs.launch_plan(argv, values, runs.check_gpus(["1"], 2))
    assert (one, env) == (argv, {"CUDA_VISIBLE_DEVICES": "1"})
    assert runs.shown_command(one, env).startswith("CUDA_VISIBLE_DEVICES=1 python -m ideogram_app.train ")
    two, env = runs.launch_plan(argv, values, runs.check_gpus(["1", "0"], 2))
    configs = Path(runs.__file__).resolve().parents[1] / "train" / "accelerate_configs"
    assert env == {}
    assert two == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(configs / "ddp_lora.yaml"),
                   "--num_processes", "2", "--gpu_ids", "0,1", "-m", "ideogram_app.train", *argv[3:]]
    parsed = launch_command_parser().parse_args(two[3:])
    assert (parsed.config_file, parsed.num_processes, parsed.gpu_ids, parsed.module) == \
        (str(configs / "ddp_lora.yaml"), 2, "0,1", True)
    assert parsed.training_script == "ideogram_app.train" and parsed.training_script_args == argv[3:]
    full = {**values, "lora_base_model": None, "trainable_models": "dit"}
    assert runs.launch_plan(runs.train_command(full), full, [0, 1])[0][4] == str(configs / "fsdp_full.yaml")
    assert runs.shown_command(two).startswith("python -m accelerate.commands.launch --config_file ")


def test_gpu_ids_are_checked_against_the_detected_count(tmp_path):
    with pytest.raises(runs.TrainFilesError, match=r"GPU '7' is not a GPU of this machine; it has 2 \(ids 0-1\)"):
        runs.check_gpus(["7"], 2)
    with pytest.raises(runs.TrainFilesError, match=r"GPU '0' is not a GPU of this machine; it has 0 \(none"):
        runs.check_gpus(["0"], 0)
    for bad in (["-1"], ["x"], [" "]):
        with pytest.raises(runs.TrainFilesError, match="is not a GPU of this machine"):
            runs.check_gpus(bad, 2)
    with pytest.raises(runs.TrainFilesError, match="GPU 1 is chosen twice"):
        runs.check_gpus(["1", 1], 2)
    folder = captioned_dataset(tmp_path)
    values = {"dataset_base_path": str(folder), "model": "some/model", "lora_base_model": "dit"}
    with pytest.raises(runs.TrainFilesError, match="GPU 7"):
        runs.RunManager(runs.GpuLease()).start("local", "r1", values, gpus=[7], detected=2)
    assert not (runs.runs_dir("local") / "r1").exists()


def nf4_dit_folder(root: Path) -> Path:
    """A model folder whose transformer header has bitsandbytes' NF4 key layout (packed uint8 data, absmax,
    code book, serialised quant state), as the official NF4 checkpoint stores it; built by hand because
    bitsandbytes' quantiser needs CUDA."""
    from safetensors.torch import save_file
    import torch

    (root / "transformer").mkdir(parents=True)
    weight = "layers.0.attention.qkv.weight"
    save_file({weight: torch.zeros(96, 1, dtype=torch.uint8), weight + ".absmax": torch.ones(3),
               weight + ".quant_map": torch.zeros(16), weight + ".quant_state.bitsandbytes__nf4":
               torch.tensor(list(b'{"quant_type": "nf4"}'), dtype=torch.uint8)},
              root / "transformer" / "diffusion_pytorch_model.safetensors")
    return root


def test_base_variants_map_to_flags_and_nf4_is_refused_where_it_cannot_run(tmp_path, tiny_repo):
    values = {"model": str(tiny_repo), "lora_base_model": "dit"}
    assert runs.apply_base_variant(values, "bf16") == values
    assert runs.apply_base_variant(values, "fp8") == {**values, "fp8_models": "dit"}
    with pytest.raises(runs.TrainFilesError, match="base variant 'int4' is not one of bf16, fp8, nf4"):
        runs.apply_base_variant(values, "int4")
    with pytest.raises(runs.TrainFilesError, match=r"diffusion_pytorch_model.safetensors holds fp8 weights, not NF4"):
        runs.apply_base_variant(values, "nf4", cuda=True)
    with pytest.raises(runs.TrainFilesError, match="needs a local model folder .* some/model"):
        runs.apply_base_variant({"model": "some/model"}, "nf4", cuda=True)
    nf4 = {"model": str(nf4_dit_folder(tmp_path / "nf4")), "lora_base_model": "dit"}
    with pytest.raises(runs.TrainFilesError, match="NF4 weights, which run only on a CUDA GPU; this machine has none"):
        runs.apply_base_variant(nf4, "nf4", cuda=False)
    with pytest.raises(runs.TrainFilesError, match="trains a LoRA only"):
        runs.apply_base_variant({**nf4, "trainable_models": "dit"}, "nf4", cuda=True)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(runs.TrainFilesError, match="needs bitsandbytes on the server"):
            runs.apply_base_variant(nf4, "nf4", cuda=True)
    else:
        assert runs.apply_base_variant(nf4, "nf4", cuda=True) == nf4
