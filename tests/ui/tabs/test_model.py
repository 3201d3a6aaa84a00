"""The Model tab's handlers, called directly: variants, the memory estimate, loading and unloading
the real tiny model (and what that changes for the Compose tab's token counter)."""
import gradio as gr
import pytest

from ideogram_app.caption import load_template, to_json
from ideogram_app.ui import editor
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.state import EditorState
from ideogram_app.ui.tabs.compose import ComposeTab
from ideogram_app.ui.tabs.model import ModelTab


def no_progress(*args, **kwargs):
    pass


def test_variants_and_estimates(tiny_repo):
    tab = ModelTab(ModelSlot())
    assert tab.on_variant("local folder") == {"model_source": ""}
    assert tab.on_variant("nf4 (~16 GB, CUDA)")["model_source"] == "ideogram-ai/ideogram-4-nf4"
    estimate = tab.on_estimate("fp8 (official, ~27 GB)", "ideogram-ai/ideogram-4-fp8", "offload", 1024, 1024)
    assert "GB of GPU memory" in estimate["model_estimate"] and "one 1024×1024 image" in estimate["model_estimate"]
    local = tab.on_estimate("local folder", str(tiny_repo), "cpu", 64, 64)
    assert local["model_estimate"].startswith("Needs CPU only")
    bad_size = tab.on_estimate("local folder", "", "full", 1000, 64)["model_estimate"]
    assert bad_size.startswith("Cannot estimate: width 1000 is not a multiple of 16")
    assert "outside the allowed" in tab.on_estimate("local folder", "", "full", 4096, 1024)["model_estimate"]


def test_page_load_shows_status_and_estimate():
    out = ModelTab(ModelSlot()).on_page_load("fp8 (official, ~27 GB)", "ideogram-ai/ideogram-4-fp8", "full", 1024, 1024)
    assert "No model loaded" in out["model_status"] and out["model_estimate"].startswith("Needs about")


def test_a_failed_load_is_reported(tiny_repo):
    tab = ModelTab(ModelSlot())
    with pytest.raises(gr.Error, match="Could not load"):
        tab.on_load_model(str(tiny_repo / "missing"), "cpu", progress=no_progress)
    assert "Last load failed" in tab.on_unload_model()["model_status"]


def test_load_model_then_exact_token_count(tiny_repo):
    slot = ModelSlot()
    model, compose = ModelTab(slot), ComposeTab(slot)
    state = editor.load_caption(EditorState(), load_template("poster_headline"))
    assert "estimate" in compose.editor_view(state)["tokens"]
    status = model.on_load_model(str(tiny_repo), "cpu", progress=no_progress)["model_status"]
    assert "Loaded" in status and "runs on the **CPU**" in status
    tokens = compose.editor_view(state)["tokens"]
    count = slot.loaded.pipe.tokenizer.count(to_json(state.caption))
    assert tokens.startswith(f"**{count} / 2048 tokens**") and "exact" in tokens
    assert "No model loaded" in model.on_unload_model()["model_status"]
