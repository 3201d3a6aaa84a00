"""The Model tab's handlers, called directly: variants, the memory estimate, loading and unloading
the real tiny model (and what that changes for the Compose tab's token counter), and what an
operator and a visitor who is not one each get from the same handlers."""
import shutil
from html import unescape

import gradio as gr
import pytest
import torch

from ideogram_app.caption import load_template, to_json
from ideogram_app.ui import editor
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.policy import Policy
from ideogram_app.ui.state import EditorState
from ideogram_app.ui.tabs.compose import ComposeTab
from ideogram_app.pipeline.estimate import KNOWN_WEIGHTS, estimate_memory
from ideogram_app.pipeline.placement import MEMORY_MODES
from ideogram_app.ui.tabs.model import (CFG_PARALLEL, CONTROLS, ONE_DEVICE, ModelTab, compute_device, device_choices,
                                        supported_speed_modes)

LOCAL = gr.Request()  # a visitor of `python app.py` on this machine: no login
FP8 = "fp8 (official, ~27 GB)"


def no_progress(*args, **kwargs):
    pass


@pytest.fixture
def models_dir(tiny_repo, tmp_path):
    """A models directory holding a copy of the tiny repo and a folder that is no model."""
    root = tmp_path / "models"
    shutil.copytree(tiny_repo, root / "tiny")
    (root / "empty").mkdir()
    return root


def test_variants_and_estimates(tiny_repo):
    tab = ModelTab(ModelSlot())
    assert tab.on_variant("local folder", "ideogram-ai/ideogram-4-fp8") == {"model_source": ""}
    assert tab.on_variant("nf4 (~16 GB, CUDA)", "")["model_source"] == "ideogram-ai/ideogram-4-nf4"
    estimate = tab.on_estimate(FP8, "ideogram-ai/ideogram-4-fp8", "offload", 1024, 1024, LOCAL)["model_estimate"]
    assert "GB of GPU memory" in estimate and "one 1024×1024 image" in estimate
    assert estimate.startswith("Needs ") and "in <code>offload</code> mode" in estimate
    others = estimate.split("Other memory modes:")[1]
    assert [m for m in MEMORY_MODES if f"<code>{m}</code>:" in others] == [m for m in MEMORY_MODES if m != "offload"]
    local = tab.on_estimate("local folder", str(tiny_repo), "cpu", 64, 64, LOCAL)
    assert local["model_estimate"].startswith("Needs CPU only")
    bad_size = tab.on_estimate("local folder", "", "full", 1000, 64, LOCAL)["model_estimate"]
    assert bad_size.startswith("Cannot estimate: width 1000 is not a multiple of 16")
    assert "outside the allowed" in tab.on_estimate("local folder", "", "full", 4096, 1024, LOCAL)["model_estimate"]
    assert "Give a model" in tab.on_estimate("local folder", "", "full", 1024, 1024, LOCAL)["model_estimate"]


def test_page_load_shows_status_and_estimate_and_enables_the_local_operator():
    out = ModelTab(ModelSlot()).on_page_load(FP8, "ideogram-ai/ideogram-4-fp8", "full", 1024, 1024, LOCAL)
    assert "No model loaded" in out["model_status"] and out["model_estimate"].startswith("Needs about")
    assert all(out[name]["interactive"] is True for name in CONTROLS)
    assert unescape(out["model_policy"]).startswith("You may load and unload the model")


def test_a_failed_load_is_reported(tiny_repo):
    tab = ModelTab(ModelSlot())
    with pytest.raises(gr.Error, match="not an allowed model source"):  # missing folder: refused before loading
        tab.on_load_model(str(tiny_repo / "missing"), "cpu", "eager", ONE_DEVICE, LOCAL, progress=no_progress)
    with pytest.raises(gr.Error, match="Could not load"):  # a folder without a model: the loader fails
        tab.on_load_model(str(tiny_repo / "vae"), "cpu", "eager", ONE_DEVICE, LOCAL, progress=no_progress)
    assert "Last load failed" in tab.on_unload_model(LOCAL)["model_status"]


def test_load_model_then_exact_token_count(tiny_repo):
    slot = ModelSlot()
    model, compose = ModelTab(slot), ComposeTab(slot)
    state = editor.load_caption(EditorState(), load_template("poster_headline"))
    assert "estimate" in compose.editor_view(state)["tokens"]
    status = model.on_load_model(str(tiny_repo), "cpu", "eager", ONE_DEVICE, LOCAL, progress=no_progress)["model_status"]
    assert "Loaded" in status and "runs on the **CPU**" in status
    tokens = compose.editor_view(state)["tokens"]
    count = slot.loaded.pipe.tokenizer.count(to_json(state.caption))
    assert tokens.startswith(f"**{count} / 2048 tokens**") and "exact" in tokens
    assert "No model loaded" in model.on_unload_model(LOCAL)["model_status"]


def test_a_failed_load_keeps_the_working_model(loaded_slot, models_dir):
    """The slot builds the new pipeline before it lets go of the old one."""
    working = loaded_slot.loaded
    tab = ModelTab(loaded_slot, policy=Policy(models_dirs=(models_dir,)))
    with pytest.raises(gr.Error, match="The model loaded before still serves"):
        tab.on_load_model(str(models_dir / "empty"), "cpu", "eager", ONE_DEVICE, LOCAL, progress=no_progress)
    assert loaded_slot.loaded is working and loaded_slot.last_error


def test_visitors_get_a_read_only_panel_and_no_server_paths(loaded_slot, models_dir, tiny_repo):
    """Shared without logins: the same handlers refuse, and the estimate ignores the source."""
    tab = ModelTab(loaded_slot, policy=Policy(share=True, models_dirs=(models_dir,)))
    out = tab.on_page_load("local folder", str(models_dir / "tiny"), "cpu", 64, 64, LOCAL)
    assert all(out[name]["interactive"] is False for name in CONTROLS)
    assert "choices" not in out["model_folder"]
    assert unescape(out["model_policy"]).startswith("**Read-only.** Only an operator may load or unload models")
    assert "--share without --auth" in unescape(out["model_policy"])
    with pytest.raises(gr.Error, match="Only an operator may load or unload models"):
        tab.on_load_model(str(models_dir / "tiny"), "cpu", "eager", ONE_DEVICE, LOCAL, progress=no_progress)
    with pytest.raises(gr.Error, match="Only an operator may load or unload models"):
        tab.on_unload_model(LOCAL)
    assert loaded_slot.loaded is not None
    estimates = {tab.on_estimate("local folder", source, "cpu", 64, 64, LOCAL)["model_estimate"]
                 for source in (str(models_dir / "tiny"), str(tiny_repo), "/etc", "/no/such/folder")}
    assert len(estimates) == 1  # the published fp8 sizes, whatever the path


def test_operators_are_the_admins_under_auth(loaded_slot, models_dir):
    tab = ModelTab(loaded_slot, policy=Policy(auth=True, admins=frozenset({"root"}), models_dirs=(models_dir,)))
    root, ann = gr.Request(username="root"), gr.Request(username="ann")
    assert tab.on_page_load(FP8, "", "cpu", 64, 64, root)["model_folder"]["choices"] == [
        str(models_dir / "empty"), str(models_dir / "tiny")]
    refused = unescape(tab.on_page_load(FP8, "", "cpu", 64, 64, ann)["model_policy"])
    assert "you are signed in as 'ann', and only the users named by --admin are operators" in refused
    assert tab.on_folder(str(models_dir / "tiny")) == {"variant": "local folder", "model_source": str(models_dir / "tiny")}
    measured = tab.on_estimate("local folder", "tiny", "cpu", 64, 64, root)["model_estimate"]
    assert measured.startswith("Needs CPU only")
    missing = unescape(tab.on_estimate("local folder", "/no/such/folder", "cpu", 64, 64, root)["model_estimate"])
    forbidden = unescape(tab.on_estimate("local folder", "/etc", "cpu", 64, 64, root)["model_estimate"])
    assert missing.startswith("Cannot estimate: '/no/such/folder' is not an allowed model source")
    assert missing.replace("/no/such/folder", "X") == forbidden.replace("/etc", "X")
    with pytest.raises(gr.Error, match="Only an operator"):
        tab.on_load_model("tiny", "cpu", "eager", ONE_DEVICE, ann, progress=no_progress)


def test_a_typed_path_survives_the_dropdown_and_the_label_follows_it(tiny_repo):
    """The order of events of the reported race: the page shows the fp8 variant, the operator types a
    local path, then clicks the variant dropdown and away. Gradio reports that focus change as the
    dropdown's `input` (with its unchanged value), so the variant is wired to `select`; and typing
    moves the label to "local folder", so even a choice of the shown variant keeps the path."""
    from ideogram_app.ui.app import build_demo

    demo = build_demo(ModelSlot())
    config = demo.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    triggers = {(ids.get(target), event) for dep in config["dependencies"] if dep["api_name"] == "on_variant"
                for target, event in dep["targets"]}
    assert triggers == {("model-variant", "select")}

    tab = ModelTab(ModelSlot())
    path = str(tiny_repo)
    assert tab.on_source(path, FP8) == {"variant": "local folder"}
    assert tab.on_variant("local folder", path) == {}  # the shown variant, picked again: the path stays
    assert tab.on_source(path + "/", "local folder") == {}  # typing on: nothing to change
    assert tab.on_source("ideogram-ai/ideogram-4-fp8", "local folder") == {"variant": FP8}
    assert tab.on_source("someone/finetune", FP8) == {"variant": "other repo id"}
    assert tab.on_source("ms://someone/finetune", FP8) == {"variant": "other repo id"}
    assert tab.on_variant("other repo id", "someone/finetune") == {}
    assert tab.on_variant("bf16 repackage (~54 GB)", path) == {"model_source": "DiffSynth-Studio/ideogram-4-bf16-repackage"}

    loaded = tab.on_load_model(path, "cpu", "eager", ONE_DEVICE, LOCAL, progress=no_progress)
    assert loaded["variant"] == "local folder" and "speed mode `eager`" in loaded["model_status"]
    fresh = tab.on_page_load(FP8, "ideogram-ai/ideogram-4-fp8", "full", 64, 64, LOCAL)  # another browser
    assert fresh["variant"]["value"] == "local folder" and fresh["model_source"]["value"] == path
    assert fresh["memory"]["value"] == "cpu" and fresh["speed_mode"]["value"] == "eager"


def test_a_visitor_sees_the_loaded_folder_by_name_only(loaded_slot, tiny_repo):
    out = ModelTab(loaded_slot, policy=Policy(share=True)).on_page_load(FP8, "", "full", 64, 64, LOCAL)
    assert out["variant"]["value"] == "local folder" and out["model_source"]["value"] == tiny_repo.name
    assert str(tiny_repo) not in repr(out)


def test_only_the_modes_this_machine_runs_are_offered_and_accepted(tiny_repo):
    cpu = torch.device("cpu")
    assert supported_speed_modes(cpu) == ("eager", "exact")  # fast needs FP8 tensor cores
    if not torch.cuda.is_available():
        assert device_choices() == {"one device": ONE_DEVICE}
    tab = ModelTab(ModelSlot())
    if compute_device().type == "cpu":
        with pytest.raises(gr.Error, match="'fast' is not offered here: it needs a GPU with FP8 tensor cores"):
            tab.on_load_model(str(tiny_repo), "cpu", "fast", ONE_DEVICE, LOCAL, progress=no_progress)
    if len(device_choices()) == 1:
        with pytest.raises(gr.Error, match="Devices: 'cuda:0,cuda:1' is not offered here"):
            tab.on_load_model(str(tiny_repo), "cpu", "eager", CFG_PARALLEL, LOCAL, progress=no_progress)
    with pytest.raises(gr.Error, match="speed mode 'turbo' is unknown"):
        tab.on_load_model(str(tiny_repo), "cpu", "turbo", ONE_DEVICE, LOCAL, progress=no_progress)
    assert tab.slot.loaded is None


def test_the_estimate_lists_every_memory_mode():
    out = ModelTab(ModelSlot()).on_estimate(FP8, "ideogram-ai/ideogram-4-fp8", "full", 1024, 1024, LOCAL)
    text = out["model_estimate"]
    for mode in MEMORY_MODES:
        assert estimate_memory(KNOWN_WEIGHTS["fp8"], mode, 1024, 1024).describe() in text, mode


@pytest.mark.gpu
def test_fast_mode_and_cfg_parallel_are_offered_on_gpus_that_run_them():
    """On the lent GPU machine: an H200 (compute capability 9.0) offers fast; two GPUs offer CFG-parallel."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    assert ("fast" in supported_speed_modes(device)) == (torch.cuda.get_device_capability(device) >= (8, 9))
    assert (CFG_PARALLEL in device_choices().values()) == (torch.cuda.device_count() >= 2)


def test_zerogpu_offers_only_eager(monkeypatch):
    """ZeroGPU Spaces (SPACES_ZERO_GPU=true) allow no torch.compile at run time."""
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert supported_speed_modes(torch.device("cpu")) == ("eager",)
    with pytest.raises(gr.Error, match="'exact' is not offered here: ZeroGPU allows no torch.compile at run time; this machine offers eager"):
        ModelTab(ModelSlot()).checked_modes("exact", ONE_DEVICE)


def test_the_start_up_model_takes_a_speed_mode_and_devices():
    from ideogram_app.ui.serving import check_options, parse_options

    options = parse_options(["--mode", "eager", "--devices", "cuda:0,cuda:1"], environ={})
    assert options.mode == "eager" and options.devices == ("cuda:0", "cuda:1") and check_options(options) is None
    assert parse_options([], environ={"IDEOGRAM_MODE": "fast"}).mode == "fast"
    assert parse_options([], environ={}).mode is None and parse_options([], environ={}).devices is None
    with pytest.raises(SystemExit):
        parse_options(["--mode", "turbo"], environ={})
    with pytest.raises(SystemExit):
        parse_options(["--devices", "cuda:0"], environ={})  # CFG-parallel needs two


def test_a_compiled_load_compiles_before_the_swap_and_says_so(tiny_repo):
    """Exact mode (compiled on the CPU here): the load's progress carries the warm-up's status lines,
    and the model is swapped in only after its blocks compiled."""
    slot = ModelSlot()
    lines = []

    def progress(fraction, desc=None):
        lines.append((desc, slot.loaded))

    ModelTab(slot).on_load_model(str(tiny_repo), "cpu", "exact", ONE_DEVICE, LOCAL, progress=progress)
    warm = [(desc, loaded) for desc, loaded in lines if desc and "DiT blocks" in desc]
    assert [desc.split(" (")[0].split(" in ")[0] for desc, _ in warm] == ["compiling the DiT blocks", "DiT blocks compiled"]
    assert all(loaded is None for _, loaded in warm)  # still loading: nothing swapped in yet
    assert slot.loaded.pipe.mode == "exact"
