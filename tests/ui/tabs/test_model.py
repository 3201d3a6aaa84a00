"""The Model tab's handlers, called directly: variants, the memory estimate, loading and unloading
the real tiny model (and what that changes for the Compose tab's token counter), and what an
operator and a visitor who is not one each get from the same handlers."""
import shutil
from html import unescape

import gradio as gr
import pytest

from ideogram_app.caption import load_template, to_json
from ideogram_app.ui import editor
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.policy import Policy
from ideogram_app.ui.state import EditorState
from ideogram_app.ui.tabs.compose import ComposeTab
from ideogram_app.ui.tabs.model import CONTROLS, ModelTab

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
    assert tab.on_variant("local folder") == {"model_source": ""}
    assert tab.on_variant("nf4 (~16 GB, CUDA)")["model_source"] == "ideogram-ai/ideogram-4-nf4"
    estimate = tab.on_estimate(FP8, "ideogram-ai/ideogram-4-fp8", "offload", 1024, 1024, LOCAL)
    assert "GB of GPU memory" in estimate["model_estimate"] and "one 1024×1024 image" in estimate["model_estimate"]
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
        tab.on_load_model(str(tiny_repo / "missing"), "cpu", LOCAL, progress=no_progress)
    with pytest.raises(gr.Error, match="Could not load"):  # a folder without a model: the loader fails
        tab.on_load_model(str(tiny_repo / "vae"), "cpu", LOCAL, progress=no_progress)
    assert "Last load failed" in tab.on_unload_model(LOCAL)["model_status"]


def test_load_model_then_exact_token_count(tiny_repo):
    slot = ModelSlot()
    model, compose = ModelTab(slot), ComposeTab(slot)
    state = editor.load_caption(EditorState(), load_template("poster_headline"))
    assert "estimate" in compose.editor_view(state)["tokens"]
    status = model.on_load_model(str(tiny_repo), "cpu", LOCAL, progress=no_progress)["model_status"]
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
        tab.on_load_model(str(models_dir / "empty"), "cpu", LOCAL, progress=no_progress)
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
        tab.on_load_model(str(models_dir / "tiny"), "cpu", LOCAL, progress=no_progress)
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
        tab.on_load_model("tiny", "cpu", ann, progress=no_progress)
