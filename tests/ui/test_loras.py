"""The app's LoRA folder and selections (ideogram_app/ui/loras.py) with real safetensors files written by
the independent test writers of tests/lora/loras.py, on the real tiny pipeline; and the Compose tab's LoRA
handlers called directly (picker, sliders, upload under the policy, generate, open in editor)."""
import hashlib
import os
import shutil
import warnings

import gradio as gr
import pytest
import torch

from ideogram_app.caption import load_template
from ideogram_app.lora import RejectedLora, UnreadableLora
from ideogram_app.ui import editor
from ideogram_app.ui.loras import (MAX_LORAS, add_lora_file, checked_selection, list_loras, lora_dir, parse_lora_args,
                                   picker_update, restore_selection, sync_loras, upload_file_name)
from ideogram_app.ui.markup import escape
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.policy import Policy
from ideogram_app.ui.results import new_browser_id, output_dir
from ideogram_app.ui.state import EditorState
from ideogram_app.ui.tabs.compose import ComposeTab
from tests.lora.loras import fused_truth, write_comfyui
from tests.ui.tabs.test_compose import TINY, Progress


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty LoRA folder of the test's own."""
    monkeypatch.setenv("IDEOGRAM_LORA_DIR", str(tmp_path / "loras"))
    return lora_dir()


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory):
    """Two different LoRAs for the tiny DiT (native layout, every block module) and one with an extra key
    that matches no module."""
    root = tmp_path_factory.mktemp("lora_sources")
    ink = write_comfyui(root / "ink.safetensors", fused_truth(seed=1))
    style = write_comfyui(root / "style.safetensors", fused_truth(seed=2, rank=2, alpha=1.0))
    return {"ink": ink, "style": style}


@pytest.fixture
def pipe(loaded_slot):
    """The session's tiny pipeline, left without LoRAs for the next test."""
    yield loaded_slot.require().pipe
    sync_loras(loaded_slot.require().pipe, [])


def test_the_folder_is_next_to_the_outputs_unless_configured(monkeypatch, tmp_path):
    monkeypatch.delenv("IDEOGRAM_LORA_DIR", raising=False)
    monkeypatch.setenv("IDEOGRAM_OUTPUT_DIR", str(tmp_path / "data" / "outputs"))
    assert lora_dir() == (tmp_path / "data" / "loras").resolve() and lora_dir().is_dir()
    monkeypatch.setenv("IDEOGRAM_LORA_DIR", str(tmp_path / "elsewhere"))
    assert lora_dir() == (tmp_path / "elsewhere").resolve()
    assert output_dir() == (tmp_path / "data" / "outputs").resolve()


def test_add_copies_a_checked_file_and_lists_it(folder, lora_files, pipe):
    assert list_loras() == []
    assert add_lora_file(lora_files["ink"], pipe=pipe) == "ink.safetensors"
    assert add_lora_file(lora_files["style"], "my-style", pipe=pipe) == "my-style.safetensors"
    assert list_loras() == ["ink.safetensors", "my-style.safetensors"]
    assert sha256(folder / "ink.safetensors") == sha256(lora_files["ink"])
    assert sorted(os.listdir(folder)) == ["ink.safetensors", "my-style.safetensors"]  # no temporary left
    # the same name again replaces the file
    add_lora_file(lora_files["style"], "ink", pipe=pipe)
    assert sha256(folder / "ink.safetensors") == sha256(lora_files["style"])


@pytest.mark.parametrize("name", ["../evil", "sub/dir", "a\\b", ".hidden", "..", "with space", ""])
def test_names_with_path_parts_or_odd_characters_are_refused(folder, lora_files, pipe, name):
    with pytest.raises(ValueError, match="file name"):
        add_lora_file(lora_files["ink"], name, pipe=pipe)
    assert os.listdir(folder) == [] and not (folder.parent / "evil.safetensors").exists()


def test_refused_files_are_named_as_the_user_called_them_and_not_kept(folder, lora_files, pipe, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UnreadableLora) as err:
        add_lora_file(junk, "upload", pipe=pipe)
    assert str(err.value).startswith("upload.safetensors: ") and str(tmp_path) not in str(err.value)
    # a LoRA for the tiny DiT does not fit the released model (the check without a pipeline)
    with pytest.raises(RejectedLora, match=r"^ink.safetensors: key .* has shape \(4, 32\)"):
        add_lora_file(lora_files["ink"])
    with pytest.raises(UnreadableLora, match="cannot be read"):
        add_lora_file(tmp_path / "missing.safetensors", pipe=pipe)
    assert os.listdir(folder) == []


def test_a_file_with_unmatched_keys_is_added_with_a_warning_naming_it(folder, pipe, tmp_path):
    truth = fused_truth(seed=3)
    truth["layers.9.attention.qkv"] = tuple(t.clone() if torch.is_tensor(t) else t
                                            for t in truth["layers.0.attention.qkv"])  # the tiny DiT has 2 blocks
    source = write_comfyui(tmp_path / "extra.safetensors", truth)
    with pytest.warns(UserWarning) as caught:
        add_lora_file(source, pipe=pipe)
    assert any("extra.safetensors" in str(w.message) and str(folder) not in str(w.message) for w in caught)


@pytest.mark.parametrize("uploaded_as, stored", [("My Ink v2.safetensors", "My_Ink_v2.safetensors"),
                                                  ("(v2) ink.safetensors", "v2__ink.safetensors"),
                                                  ("---.safetensors", "lora.safetensors")])
def test_upload_names_become_folder_names(folder, lora_files, pipe, uploaded_as, stored):
    assert add_lora_file(lora_files["ink"], upload_file_name(uploaded_as), pipe=pipe) == stored


def test_selections_are_checked(folder, lora_files, pipe):
    add_lora_file(lora_files["ink"], pipe=pipe)
    add_lora_file(lora_files["style"], pipe=pipe)
    assert checked_selection(["style.safetensors", "ink.safetensors"], [0.5, 1, 9]) == \
        [("style.safetensors", 0.5), ("ink.safetensors", 1.0)]
    for names, scales, message in [
        (["nope.safetensors"], [1], r"'nope.safetensors' is not in the server's LoRA folder \(available: ink"),
        (["../ink.safetensors"], [1], "not in the server's LoRA folder"),
        (["ink.safetensors", "ink.safetensors"], [1, 1], "asked for twice"),
        (["ink.safetensors"], [float("nan")], "must be a number"),
        (["ink.safetensors"], [2.5], "outside -2 to 2"),
        (["ink.safetensors"], [True], "must be a number"),
        (["ink.safetensors"], [], "1 LoRAs but 0 scales"),
        (["ink.safetensors"] * (MAX_LORAS + 1), [1] * (MAX_LORAS + 1), f"at most {MAX_LORAS}"),
        ("ink.safetensors", [1], "expected a list of file names, got str"),
    ]:
        with pytest.raises(ValueError, match=message):
            checked_selection(names, scales)
    assert parse_lora_args(["ink.safetensors:0.25", "style.safetensors"]) == \
        [("ink.safetensors", 0.25), ("style.safetensors", 1.0)]
    assert parse_lora_args(None) == []
    for value, message in [("ink.safetensors", "must be a list"), ([3], "must be a \"name:scale\" string"),
                           (["ink.safetensors:lots"], "must be a number"), (["ink.safetensors:inf"], "must be a number")]:
        with pytest.raises(ValueError, match=message):
            parse_lora_args(value)


def dit_output(pipe) -> torch.Tensor:
    """The conditional DiT's velocity for fixed inputs (what a LoRA changes)."""
    from tests.model.test_dit_parity import make_inputs

    with torch.no_grad():
        out = pipe.transformer(*make_inputs([6, 3], seed=1))
    return out[0] if isinstance(out, tuple) else out


def test_sync_makes_the_pipeline_carry_exactly_the_selection(folder, lora_files, pipe):
    base = dit_output(pipe)
    add_lora_file(lora_files["ink"], pipe=pipe)
    add_lora_file(lora_files["style"], pipe=pipe)
    ink_sha = sha256(lora_files["ink"])

    def carried():
        return [(row["file"], row["scale"], row["sha256"]) for row in pipe.loras]

    sync_loras(pipe, [("ink.safetensors", 0.5)])
    assert carried() == [("ink.safetensors", 0.5, ink_sha)]
    with_ink = dit_output(pipe)
    assert not torch.equal(with_ink, base)
    sync_loras(pipe, [("ink.safetensors", 0.75), ("style.safetensors", 1.0)])
    assert carried() == [("ink.safetensors", 0.75, ink_sha), ("style.safetensors", 1.0, sha256(lora_files["style"]))]
    sync_loras(pipe, [("style.safetensors", 1.0), ("ink.safetensors", 0.5)])  # the order asked for
    assert [row["file"] for row in pipe.loras] == ["style.safetensors", "ink.safetensors"]
    sync_loras(pipe, [("ink.safetensors", 0.5)])
    assert torch.equal(dit_output(pipe), with_ink)
    # a file replaced in the folder is loaded again
    shutil.copyfile(lora_files["style"], folder / "ink.safetensors")
    sync_loras(pipe, [("ink.safetensors", 0.5)])
    assert carried() == [("ink.safetensors", 0.5, sha256(lora_files["style"]))]
    sync_loras(pipe, [])
    assert pipe.loras == [] and torch.equal(dit_output(pipe), base)  # the base, bit for bit


def test_sync_names_a_bad_file_in_the_folder_without_its_path(folder, pipe):
    (folder / "broken.safetensors").write_bytes(b"12345678")
    with pytest.raises(UnreadableLora) as err:
        sync_loras(pipe, [("broken.safetensors", 1.0)])
    assert str(err.value).startswith("broken.safetensors: ") and str(folder) not in str(err.value)


def test_restore_finds_files_by_sha256_then_by_name(folder, lora_files, pipe, tmp_path):
    add_lora_file(lora_files["ink"], "renamed", pipe=pipe)  # ink's weights under another name
    other = write_comfyui(tmp_path / "other.safetensors", fused_truth(seed=5))
    add_lora_file(other, "style", pipe=pipe)  # style's name, other weights
    ink_sha, style_sha = sha256(lora_files["ink"]), sha256(lora_files["style"])
    meta = [{"name": "ink", "file": "ink.safetensors", "sha256": ink_sha, "scale": 0.5, "target": "transformer"},
            {"name": "style", "file": "style.safetensors", "sha256": style_sha, "scale": -1, "target": "transformer"},
            {"name": "gone", "file": "gone.safetensors", "sha256": "0" * 64, "scale": 1.0, "target": "transformer"}]
    selection, notes = restore_selection(meta)
    assert selection == [("renamed.safetensors", 0.5), ("style.safetensors", -1.0)]
    assert notes == ["style.safetensors in the LoRA folder is not the file this result was made with (another "
                     "sha256); it is selected anyway", "gone.safetensors is not in the LoRA folder"]
    # two copies of the same weights: the one with the recorded name
    add_lora_file(lora_files["ink"], "ink", pipe=pipe)
    assert restore_selection(meta[:1]) == ([("ink.safetensors", 0.5)], [])
    # hostile metadata (an uploaded PNG) gives notes, never an exception
    selection, notes = restore_selection([{"file": 3}, "x", {"file": "ink.safetensors", "scale": "big"},
                                          {"file": "style.safetensors", "scale": 1, "target": "unconditional_lora"}])
    assert selection == [] and len(notes) == 4
    assert restore_selection({"not": "a list"})[0] == [] and restore_selection(None) == ([], [])


def test_picker_update_lists_the_folder_and_keeps_only_files_in_it(folder, lora_files, pipe):
    add_lora_file(lora_files["ink"], pipe=pipe)
    update = picker_update(["ink.safetensors", "gone.safetensors", "ink.safetensors"])
    assert update["__type__"] == "update" and update["choices"] == ["ink.safetensors"]
    assert update["value"] == ["ink.safetensors"]


# ----- the Compose tab's handlers ------------------------------------------------------------------------

class Request:
    """What a handler reads from gr.Request: the signed-in user and the session."""

    def __init__(self, username=None):
        self.username = username
        self.session_hash = "test-session"


def poster_state():
    return editor.load_caption(EditorState(), load_template("poster_headline"))


def test_upload_is_for_operators_only(folder, lora_files, loaded_slot, tmp_path):
    upload = tmp_path / "upload" / "My Ink v2.safetensors"
    upload.parent.mkdir()
    shutil.copyfile(lora_files["ink"], upload)
    shared = ComposeTab(loaded_slot, policy=Policy(share=True))
    with pytest.raises(gr.Error, match="Only an operator may add LoRA files here: the app is shared"):
        shared.on_lora_upload(str(upload), [], request=Request())
    assert list_loras() == []
    load = shared.on_page_load(None, None, request=Request())
    assert load["lora_upload"]["visible"] is False and load["lora_pick"]["choices"] == []
    local = ComposeTab(loaded_slot)  # the local default: the machine's user is the operator
    assert local.on_page_load(None, None, request=Request())["lora_upload"]["visible"] is True
    out = local.on_lora_upload(str(upload), ["x.safetensors"], request=Request())
    assert list_loras() == ["My_Ink_v2.safetensors"]
    assert out["lora_pick"]["value"] == ["My_Ink_v2.safetensors"] 
    assert escape("Added My_Ink_v2.safetensors (checked against the loaded model).") == out["lora_note"]


def test_an_upload_that_does_not_fit_the_model_is_refused_by_name(folder, loaded_slot, tmp_path):
    junk = tmp_path / "big.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(gr.Error) as err:
        ComposeTab(loaded_slot).on_lora_upload(str(junk), [], request=Request())
    assert err.value.message.startswith("big.safetensors: ") and str(tmp_path) not in err.value.message
    from ideogram_app.limits import Limits

    with pytest.raises(gr.Error, match="big.safetensors is 0.0 MiB; uploads are limited"):
        ComposeTab(loaded_slot, Limits(max_upload_bytes=10)).on_lora_upload(str(junk), [], request=Request())
    assert list_loras() == []


def test_sliders_follow_the_selection_and_keep_scales_by_name():
    tab = ComposeTab(ModelSlot())
    out = tab.on_lora_pick(["a.safetensors"], [], 1.0, 1.0, 1.0, 1.0)
    assert out == {"lora_shown": ["a.safetensors"], "lora_scales": [("a.safetensors", 1.0)]}
    out = tab.on_lora_pick(["b.safetensors", "a.safetensors"], ["a.safetensors"], 0.3, 1.0, 1.0, 1.0)
    assert out["lora_scales"] == [("b.safetensors", 1.0), ("a.safetensors", 0.3)]
    assert tab.on_lora_pick(["a.safetensors"], ["a.safetensors"], 0.3, 1, 1, 1) == {}  # an echo of the app's own update


def test_generate_with_a_lora_records_it_and_open_in_editor_restores_it(folder, lora_files, loaded_slot, pipe):
    tab = ComposeTab(loaded_slot)
    add_lora_file(lora_files["ink"], pipe=pipe)
    browser = new_browser_id()
    plain = tab.on_generate(poster_state(), browser, **TINY, request=None, progress=Progress())
    assert escape("no LoRA.") in plain["gen_status"] and "loras" not in plain["results"][-1]["settings"]
    out = tab.on_generate(poster_state(), browser, **TINY, lora_pick=["ink.safetensors"], lora_scale_0=0.7,
                          request=None, progress=Progress())
    assert escape("LoRAs ink.safetensors ×0.7.") in out["gen_status"]
    recorded = out["results"][-1]["settings"]["loras"]
    assert [(r["file"], r["sha256"], r["scale"], r["target"]) for r in recorded] == \
        [("ink.safetensors", sha256(lora_files["ink"]), 0.7, "transformer")]
    assert out["result_settings"]["settings"]["loras"] == recorded
    assert out["result_settings"]["loras"] == [f"ink.safetensors ×0.7, sha256 {sha256(lora_files['ink'])}"]
    assert "ink.safetensors ×0.7" in out["gallery"][-1][1]
    opened = tab.on_open_result(EditorState(), out["results"], len(out["results"]) - 1)
    assert opened["lora_pick"]["value"] == ["ink.safetensors"] and opened["lora_shown"] == ["ink.safetensors"]
    assert opened["lora_scales"] == [("ink.safetensors", 0.7)]
    # the plain result clears the picker; a result whose LoRA left the folder says so
    assert tab.on_open_result(EditorState(), out["results"], 0)["lora_pick"]["value"] == []
    os.unlink(folder / "ink.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        missing = tab.on_open_result(EditorState(), out["results"], len(out["results"]) - 1)
    assert missing["lora_pick"]["value"] == [] 
    assert escape("ink.safetensors is not in the LoRA folder") in missing["json_status"]


def test_generate_refuses_a_lora_that_is_not_in_the_folder(folder, loaded_slot):
    with pytest.raises(gr.Error, match="LoRAs: 'x.safetensors' is not in the server's LoRA folder"):
        ComposeTab(loaded_slot).on_generate(poster_state(), new_browser_id(), **TINY, lora_pick=["x.safetensors"],
                                            request=None, progress=Progress())
