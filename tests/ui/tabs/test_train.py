"""The Train tab's handlers called directly (real files, real trainer processes on the tiny repo), and
its policy on a really launched `--auth` server called by event index, as a hostile page would."""
from __future__ import annotations

import hashlib
import io
import json
import time
from html import unescape
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from safetensors import safe_open
from PIL import Image

from ideogram_app.caption import verify
from ideogram_app.lora.formats import read_lora
from ideogram_app.pipeline.metadata import read_image_metadata
from ideogram_app.ui.loras import model_targets
from ideogram_app.ui import editor, runs
from ideogram_app.ui.results import new_browser_id
from ideogram_app.ui.tabs.compose import ComposeTab
from ideogram_app.ui.app import build_demo
from ideogram_app.ui.policy import Policy
from ideogram_app.ui.tabs.train import ADVANCED, MAIN, PRESETS, TrainTab
from tests.ui.conftest import start_tiny_server, stop_app
from tests.ui.test_policy import EventError, Page

LOCAL = gr.Request()


def png(path: Path, seed: int, size=(80, 64)) -> Path:
    rng = np.random.default_rng(seed)
    small = (rng.random((size[1] // 16, size[0] // 16, 3)) * 255).astype("uint8")
    Image.fromarray(small).resize(size, Image.BILINEAR).save(path)
    return path


@pytest.fixture
def tab(loaded_slot, tmp_path, monkeypatch):
    monkeypatch.setenv("IDEOGRAM_TRAIN_DIR", str(tmp_path / "training"))
    monkeypatch.setenv("IDEOGRAM_LORA_DIR", str(tmp_path / "loras"))
    return TrainTab(loaded_slot, policy=Policy(), manager=runs.RunManager(runs.GpuLease()))


def select(index: int) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": None, "selected": True})


def start_controls(dataset: str, model: str, steps: int, prompts: str = "", base: str = "bf16", gpus=(),
                   **advanced) -> list:
    values = dict(PRESETS["quick test"], lora_rank=2, lora_alpha=2, max_steps=steps, max_pixels=80 * 64)
    main = [values[setting] for _, setting, _ in MAIN]
    extra = [advanced.get(s.name, False if s.kind == "flag" else "") for s in ADVANCED]
    return [dataset, "", model, *main, base, gpus, "", "high_level_description", prompts, *extra]


def wait_finished(tab: TrainTab, name: str, timeout: float = 90) -> dict:
    cursor, plot_rows = None, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = tab.on_watch_tick(name, cursor, LOCAL)
        cursor = out["tr_cursor"]
        if "tr_plot" in out:
            plot_rows = len(out["tr_plot"])
        if not out["tr_timer"]["active"]:
            out["plot_rows"] = plot_rows
            return out
        time.sleep(0.2)
    raise AssertionError("the run did not end")


def test_caption_copy_train_and_use_in_generate(tab, tiny_repo, tmp_path):
    files = [str(png(tmp_path / f"shot{i}.png", i)) for i in range(3)]
    made = tab.on_create_dataset(files, "shots", LOCAL)
    assert len(made["tr_grid"]) == 3 and all("missing" in label for _, label in made["tr_grid"])
    dataset, images = made["tr_dataset"], made["tr_images"]

    view = tab.on_grid_select(dataset, images, select(0), LOCAL)
    state = view["tr_editor"]
    assert view["tr_canvas"]["aspect"] == pytest.approx(80 / 64) and view["tr_canvas"]["background"]
    # a text box drawn on the canvas (stage pixels), then typed text, description and scene
    state = tab.on_canvas_edit(state, gr.EventData(None, {"op": "draw", "kind": "text", "rect": [8, 6, 72, 30],
                                                          "size": [80, 64]}))["tr_editor"]
    state = tab.on_element_text(state, "SALE")["tr_editor"]
    state = tab.on_element_desc(state, "bold red letters")["tr_editor"]
    state = tab.on_hld(state, "A poster with one word.")["tr_editor"]
    state = tab.on_background(state, "smooth colour noise")["tr_editor"]
    saved = tab.on_save_caption(dataset, images[0], state, LOCAL)
    assert "clean" in saved["tr_caption_note"]
    copied = tab.on_copy_to_all(dataset, images[0], state, LOCAL)
    assert all("clean" in label for _, label in copied["tr_grid"])
    for image in images:
        text = Path(image).with_suffix(".json").read_text(encoding="utf-8")
        assert verify(text) == []  # canonical and valid: the verifier reports nothing
        caption = json.loads(text)
        assert caption["compositional_deconstruction"]["elements"] == [
            {"type": "text", "bbox": [94, 100, 469, 900], "text": "SALE", "desc": "bold red letters"}]
    assert len(copied["tr_val_prompts"].splitlines()) == 2  # two dataset captions as validation prompts

    started = tab.on_start_run(LOCAL, *start_controls(dataset, str(tiny_repo), 5, copied["tr_val_prompts"],
                                                  dtype="float32", validation_preset="turbo",
                                                  cache_dir=str(tmp_path / "cache")))
    name = started["tr_runs"]["value"]
    assert started["tr_command"].startswith("python -m ideogram_app.train ") and "--lora_rank 2" in started["tr_command"]
    assert started["tr_timer"]["active"]
    ended = wait_finished(tab, name)
    assert ended["plot_rows"] == 5, "the loss plot has one point per step"
    progress = unescape(ended["tr_progress"])
    assert "— finished · step 5/5" in progress and "LoRA <code>lora.safetensors</code>" in progress
    table = ended["tr_runs_table"]
    assert table.loc[0, "status"] == "finished" and table.loc[0, "LoRA"] == "lora.safetensors"
    assert len(ended["tr_val_gallery"]) == 2

    choices = tab.on_run_select(name, LOCAL)["tr_use_ckpt"]["choices"]
    assert choices[0] == runs.FINAL and choices[1:] and all(c.startswith("step-") for c in choices[1:])
    checkpoint = tab.on_use_in_generate(LOCAL, name, choices[-1], 1.0, [], [])  # a saved step's LoRA, not the final
    (from_step,) = checkpoint["lora_pick"]["value"]
    assert from_step == f"{name}-{choices[-1].replace('-', '')}.safetensors"
    assert (tmp_path / "loras" / from_step).read_bytes() == \
        (Path(started["tr_cursor"]["folder"]) / "checkpoints" / choices[-1] / "lora.safetensors").read_bytes()
    used = tab.on_use_in_generate(LOCAL, name, runs.FINAL, 0.6, [], [])
    (added,) = used["lora_pick"]["value"]
    assert (tmp_path / "loras" / added).is_file() and added in used["lora_pick"]["choices"]
    assert used["lora_shown"] == [added] and used["lora_scales"] == [(added, 0.6)]

    # Generate with the picked LoRA at the preselected scale: the PNG records the run's file and sha256
    compose = ComposeTab(tab.slot)
    out = compose.on_generate(editor.restore(Path(images[0]).with_suffix(".json").read_text(encoding="utf-8")),
                              new_browser_id(), preset="Turbo · 12 steps", width=80, height=64, seed=3,
                              randomize=False, num_images=1, input_image=None, strength=1.0,
                              lora_pick=used["lora_pick"]["value"], lora_scale_0=used["lora_scales"][0][1],
                              request=None, progress=lambda *a, **k: None)
    final = tab.manager.info(Path(started["tr_cursor"]["folder"])).lora
    with Image.open(out["results"][-1]["path"]) as made:  # read back from the PNG file on disk
        rows = read_image_metadata(made)["settings"]["loras"]
    assert [(r["file"], r["sha256"], r["scale"]) for r in rows] == \
        [(added, hashlib.sha256(final.read_bytes()).hexdigest(), 0.6)]

    # downloads: the native file as written, and a diffusers export holding the same weights
    native = Path(tab.on_download_lora(name, runs.FINAL, LOCAL)["tr_download_file"])
    assert native.read_bytes() == final.read_bytes() and native.name == f"{name}-step5.safetensors"
    exported = Path(tab.on_download_diffusers(name, runs.FINAL, LOCAL)["tr_download_file"])
    with safe_open(exported, "pt") as handle:
        keys = list(handle.keys())
        assert "lora_adapter_metadata" in handle.metadata()
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    targets = model_targets(tab.slot.loaded.pipe)
    ours, theirs = read_lora(final, targets).modules, read_lora(exported, targets).modules
    assert set(ours) == set(theirs)
    for key, module in ours.items():  # the same delta weight: scale · up @ down (hand-written)
        delta = lambda m: m.up.double() @ m.down.double() * (m.alpha / m.rank)
        torch.testing.assert_close(delta(theirs[key]), delta(module))
    with pytest.raises(gr.Error, match="has no LoRA 'step-9'"):
        tab.on_download_lora(name, "step-9", LOCAL)


def test_a_corrupt_image_fails_with_the_trainer_message(tab, tiny_repo, tmp_path):
    files = [str(png(tmp_path / f"ok{i}.png", i)) for i in range(2)]
    made = tab.on_create_dataset(files, None, LOCAL)
    folder = Path(made["tr_dataset"])
    for image in runs.dataset_images(folder):
        runs.write_caption(image, "a photo of noise")
    (folder / "zz.png").write_bytes((folder / "ok0.png").read_bytes()[:80])  # truncated after the upload checks
    runs.write_caption(folder / "zz.png", "a photo of noise")
    started = tab.on_start_run(LOCAL, *start_controls(str(folder), str(tiny_repo), 4, dtype="float32",
                                                  cache_dir=str(tmp_path / "cache")))
    ended = wait_finished(tab, started["tr_runs"]["value"])
    progress = unescape(ended["tr_progress"])
    assert "— failed" in progress and "**Error:** 1 problem(s) in the dataset:" in progress and "zz.png" in progress


def test_refusals_name_what_is_wrong(tab, tiny_repo, tmp_path):
    files = [str(png(tmp_path / "one.png", 0))]
    dataset = tab.on_create_dataset(files, "one", LOCAL)["tr_dataset"]
    with pytest.raises(gr.Error, match=r"--lora_rank: must be a whole number, got 'x'"):
        controls = start_controls(dataset, str(tiny_repo), 4)
        controls[3] = "x"
        tab.on_start_run(LOCAL, *controls)
    with pytest.raises(gr.Error, match="is not one of your datasets"):
        tab.on_start_run(LOCAL, *start_controls("/etc", str(tiny_repo), 4))
    with pytest.raises(gr.Error, match="Only an operator may train here"):
        TrainTab(tab.slot, policy=Policy(host="0.0.0.0")).on_create_dataset(files, None, LOCAL)
    shared = TrainTab(tab.slot, policy=Policy(auth=True, admins=frozenset({"root"}), models_dirs=(tiny_repo.parent,)))
    root = gr.Request(username="root")
    quick = [PRESETS["quick test"][setting] for _, setting, _ in MAIN]
    assert "CPU: tiny models only" in unescape(tab.on_estimate(*quick, "bf16", False)["tr_estimate"])  # no CUDA here
    assert "CPU: tiny models only" in unescape(tab.on_page_load(LOCAL)["tr_estimate"])
    linked = Policy(share=True, auth=True, admins=frozenset({"root"}))  # behind --share: off without --allow-training
    with pytest.raises(gr.Error, match="Training is off on this server: .* --allow-training"):
        TrainTab(tab.slot, policy=linked).on_create_dataset(files, None, root)
    assert "Training is not available to you" in TrainTab(tab.slot, policy=linked).on_page_load(root)["tr_policy"]
    assert "/user-root/datasets/" in TrainTab(tab.slot, policy=Policy(share=True, auth=True, admins=frozenset({"root"}),
                                                                     allow_training=True)).on_create_dataset(
        files, "linked", root)["tr_dataset"]
    with pytest.raises(gr.Error, match="is not one of your datasets"):  # run and dataset folders are per user
        shared.on_start_run(root, *start_controls(dataset, str(tiny_repo), 4))
    own = shared.on_create_dataset(files, "one", root)["tr_dataset"]
    assert "/user-root/datasets/" in own
    with pytest.raises(gr.Error, match="--cache_dir names a file on the server"):
        shared.on_start_run(root, *start_controls(own, str(tiny_repo), 4, cache_dir="/tmp"))


def test_gpu_ids_and_base_variant_are_checked_before_a_run_starts(tab, tiny_repo, tmp_path):
    """The GPU ids of a Start call are checked against the detected count (injected: 2 here), whatever the
    page offered; nf4 needs an NF4 checkpoint. Nothing is written for a refused start."""
    dataset = tab.on_create_dataset([str(png(tmp_path / "one.png", 0))], "one", LOCAL)["tr_dataset"]
    two = TrainTab(tab.slot, policy=Policy(), manager=tab.manager, gpu_count=2)
    with pytest.raises(gr.Error, match=r"Not started: GPU '7' is not a GPU of this machine; it has 2 \(ids 0-1\)"):
        two.on_start_run(LOCAL, *start_controls(dataset, str(tiny_repo), 4, gpus=["0", "7"]))
    with pytest.raises(gr.Error, match=r"Not started: GPU '0' is not a GPU of this machine; it has 0"):
        tab.on_start_run(LOCAL, *start_controls(dataset, str(tiny_repo), 4, gpus=["0"]))
    for cpu_tab, gpus in ((tab, ["CPU"]), (two, ["1"])):  # the GPU choice passes; the base variant is refused
        with pytest.raises(gr.Error, match=r"Not started: base variant nf4: .*diffusion_pytorch_model.safetensors "
                                           r"holds fp8 weights, not NF4"):
            cpu_tab.on_start_run(LOCAL, *start_controls(dataset, str(tiny_repo), 4, base="nf4", gpus=gpus))
    quick = [PRESETS["quick test"][setting] for _, setting, _ in MAIN]
    assert "CPU: tiny models only" in unescape(tab.on_estimate(*quick, "fp8", False)["tr_estimate"])
    assert not tab.manager.list("local")


def test_the_tab_is_wired_into_the_app(loaded_slot):
    demo = build_demo(loaded_slot)
    gpus = next(c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "train-gpus")["props"]
    assert (gpus["choices"], gpus["value"], gpus["interactive"]) == ([("CPU", "CPU")], ["CPU"], False)  # no CUDA here
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"on_start_run", "on_stop_run", "on_resume_run", "on_delete_run", "on_watch_tick", "on_use_in_generate"} <= names


@pytest.fixture(scope="module")
def auth_server(tiny_repo, tmp_path_factory):
    server = start_tiny_server(tiny_repo, tmp_path_factory.mktemp("train-auth") / "outputs", "--auth", "ann:pw",
                               "--auth", "root:pw", "--admin", "root")
    yield server
    stop_app(server.proc)


def test_a_non_admin_cannot_train_by_raw_event_calls(auth_server, tiny_repo):
    ann, root = Page(auth_server.url, ("ann", "pw")), Page(auth_server.url, ("root", "pw"))
    start_inputs = len(next(d for d in ann.config["dependencies"] if d.get("api_name") == "on_start_run")["inputs"])
    calls = {"on_start_run": [None] * start_inputs, "on_create_dataset": [None, "x"], "on_stop_run": [None],
             "on_resume_run": [None], "on_delete_run": [None], "on_open_dataset": [None]}
    calls["on_start_run"][:3] = ["/tmp", "", str(tiny_repo)]
    calls["on_start_run"][3 + len(MAIN) + 1] = []  # the GPU choice (Gradio itself refuses None for a list)
    for api_name, data in calls.items():
        with pytest.raises(EventError, match="Only an operator may train here: you are signed in as 'ann'"):
            ann.call(api_name, *data)
    policy = ann.call("on_page_load", output_elem_id="train-policy")
    assert any(isinstance(v, str) and "Training is not available to you" in v for v in policy)
    with pytest.raises(EventError, match="Open or create a dataset first"):  # the admin passes the policy
        root.call("on_start_run", None, *calls["on_start_run"][1:])
    assert not list((auth_server.output_dir.parent / "training").glob("user-ann*"))
