"""Every handler of the Compose & generate tab, called directly (no browser), with the real caption core
and, for generation, the real pipeline on the tiny synthetic model. Each call also checks that the
handler returns only the outputs it declares (@emits). Hostile inputs (client data: the browser's
saved copy, PNG metadata, uploads, event payloads) are refused with messages that name no server path."""
import json
import os
import time

import gradio as gr
import pytest
from PIL import Image

from ideogram_app.caption import load_template, to_json
from ideogram_app.limits import Limits
from ideogram_app.pipeline.metadata import attach_metadata, make_record, read_image_metadata, save_png
from ideogram_app.ui import editor
from ideogram_app.ui.markup import escape
from ideogram_app.ui.model_slot import HOW_TO_GET_WEIGHTS, ModelSlot
from ideogram_app.ui.results import SCRATCH_TTL_S, new_browser_id, output_dir, scratch_file
from ideogram_app.ui.state import EditorState
from ideogram_app.ui.wiring import Components
from ideogram_app.ui.tabs.compose import (GENERATE_LABEL, NO_MODEL, PLAIN_TEXT_NOTE, RUNNING_LABEL, SESSION_LOST,
                                          ComposeTab, _needs_session)
from ideogram_app.ui.views import BLANK_NOTE

TINY = dict(preset="Turbo · 12 steps", width=80, height=64, seed=7, randomize=False, num_images=1,
            input_image=None, strength=1.0)


class Progress:
    """Records what a handler reports through gr.Progress."""

    def __init__(self, on_call=None):
        self.calls = []
        self.on_call = on_call

    def __call__(self, value, desc=None, **kwargs):
        self.calls.append((value, desc))
        if self.on_call:
            self.on_call(value)


@pytest.fixture
def handlers():
    return ComposeTab(ModelSlot())


@pytest.fixture
def tiny_handlers(loaded_slot):
    return ComposeTab(loaded_slot)


@pytest.fixture
def browser():
    """A fresh browser id: its results folder starts empty."""
    return new_browser_id()


def poster_state():
    return editor.load_caption(EditorState(), load_template("poster_headline"))


def canvas_event(data):
    return gr.EventData(None, data)


def test_page_load_fills_every_view_and_gives_a_new_browser_an_id(handlers):
    out = handlers.on_page_load(None, None)
    for name in ("canvas", "json", "issues_all", "tokens", "el_type", "hld", "palette", "saved", "gallery"):
        assert name in out
    assert "estimate: no model tokenizer loaded" in out["tokens"]
    assert len(out["browser_id"]) == 32 and out["results"] == [] and out["state"].placeholder is False
    kept = handlers.on_page_load(None, out["browser_id"])
    assert "browser_id" not in kept  # a browser keeps its id
    assert len(handlers.on_page_load(None, "../../etc")["browser_id"]) == 32  # never a path from the client


def test_page_load_restores_the_caption_the_browser_kept(handlers):
    state = poster_state()
    state.width, state.height = 880, 1184
    saved = handlers.editor_view(state)["saved"]
    assert saved == {"caption": to_json(state.caption), "width": 880, "height": 1184}
    out = handlers.on_page_load(saved, new_browser_id())
    assert out["state"].caption == state.caption and out["state"].undo_stack == []
    assert (out["width"], out["height"], out["aspect"]) == (880, 1184, "3:4 · 1 MP")
    assert json.loads(out["json"]) == state.caption
    assert out["json_status"] == escape("Restored the caption kept in this browser.")
    plain = handlers.on_page_load({"caption": "a red bicycle", "width": 64, "height": 64}, new_browser_id())
    assert plain["state"].plain_text == "a red bicycle" and plain["json"] == "a red bicycle"


@pytest.mark.parametrize("saved, message", [
    ("just a string", "not in the expected form"),
    ({"caption": 5}, "not in the expected form"),
    ({"caption": '{"compositional_deconstruction": '}, "could not be restored: it is not valid JSON (line 1"),
    ({"caption": '{"elements": []}'}, "could not be restored: it is not a caption"),
    ({"caption": "x\ud800"}, "lone UTF-16 surrogate"),
    ({"caption": "x" * 100_001}, "100,001 characters long"),
])
def test_a_broken_browser_copy_starts_empty_and_says_why(handlers, saved, message):
    out = handlers.on_page_load(saved, new_browser_id())
    assert out["state"].caption == EditorState().caption and out["state"].plain_text is None
    assert escape(message) in out["json_status"]


def test_a_browser_copy_with_a_bad_size_keeps_the_caption_and_the_default_size(handlers):
    caption = to_json(load_template("logo"))
    for width, height in ((0, 0), (float("nan"), 64), ("abc", None), (100000, 100000)):
        out = handlers.on_page_load({"caption": caption, "width": width, "height": height}, new_browser_id())
        assert out["state"].caption == load_template("logo").to_dict()
        assert (out["width"], out["height"]) == (1024, 1024)


def test_handlers_refuse_a_session_the_server_lost(handlers):
    lost = EditorState(placeholder=True)
    with pytest.raises(gr.Error) as err:
        _needs_session(handlers.on_add_element("obj"))(lost)
    assert err.value.message == SESSION_LOST and "Reload the page" in SESSION_LOST
    assert _needs_session(handlers.on_add_element("obj"))(EditorState())["state"].elements  # a live one works


def test_canvas_edit_updates_json_inspector_and_issues(handlers):
    out = handlers.on_canvas_edit(EditorState(), canvas_event(
        {"op": "draw", "kind": "text", "rect": [100, 50, 300, 150], "size": [400, 200]}))
    shown = json.loads(out["json"])
    assert shown["compositional_deconstruction"]["elements"][0]["bbox"] == [250, 250, 750, 750]
    assert out["canvas"]["elements"][0]["bbox"] == [250, 250, 750, 750]
    assert out["el_type"] == "text" and out["el_has_box"] is True
    assert escape("elements[0]") in out["issues_element"]


def test_canvas_edit_with_a_bad_payload_warns_and_changes_nothing(handlers):
    with pytest.warns(UserWarning, match="element 3"):
        assert handlers.on_canvas_edit(EditorState(), canvas_event({"op": "delete", "index": 3})) == {}


def test_json_input_valid_updates_canvas_but_not_the_editor_text(handlers):
    text = to_json(load_template("logo"))
    out = handlers.on_json_input(EditorState(), text)
    assert "json" not in out  # never rewrite the box the user is typing in
    assert len(out["canvas"]["elements"]) == len(load_template("logo").elements)
    assert out["json_status"].startswith("Caption updated")


def test_json_input_invalid_only_reports_where(handlers):
    out = handlers.on_json_input(poster_state(), '{"compositional_deconstruction": [1, 2,]}')
    assert set(out) == {"json_status"} and escape("line 1, column") in out["json_status"]


def test_an_edit_that_makes_the_caption_too_long_is_refused():
    handlers = ComposeTab(ModelSlot(), Limits(max_caption_chars=2000))
    state = poster_state()
    assert handlers.on_element_field("desc")(state, "x" * 500)["state"].elements[0]["desc"] == "x" * 500
    with pytest.raises(gr.Error, match=r"This edit is not applied: the caption is [\d,]+ characters long; at most "
                                       r"2,000 are accepted"):
        handlers.on_element_field("desc")(state, "x" * 1900)


@pytest.mark.parametrize("field, value, check", [
    ("type", "obj", lambda e: e["type"] == "obj" and "text" not in e),
    ("text", "HELLO", lambda e: e["text"] == "HELLO"),
    ("desc", "tall red letters", lambda e: e["desc"] == "tall red letters"),
    ("has_box", False, lambda e: "bbox" not in e),
])
def test_element_field_handlers(handlers, field, value, check):
    out = handlers.on_element_field(field)(poster_state(), value)
    assert check(out["state"].elements[0])
    assert json.loads(out["json"])["compositional_deconstruction"]["elements"][0] == out["state"].elements[0]


def test_element_field_with_nothing_selected_is_a_no_op(handlers):
    assert handlers.on_element_field("desc")(EditorState(), "x") == {}


def test_unchanged_values_are_not_edits(handlers):
    """A field's `blur` repeats the value its `input` events already applied: same value = no-op."""
    state = poster_state()
    element = state.elements[0]
    assert handlers.on_element_field("desc")(state, element["desc"]) == {}
    assert handlers.on_element_field("text")(state, element["text"]) == {}
    assert handlers.on_json_input(state, handlers.editor_view(state)["json"]) == {}
    assert handlers.on_high_level_description(state, state.caption["high_level_description"]) == {}
    assert handlers.on_background_text(state, state.caption["compositional_deconstruction"]["background"]) == {}
    style = state.caption["style_description"]
    for field, key in (("aesthetics", "aesthetics"), ("lighting", "lighting"), ("photo_or_art", "art_style"),
                       ("medium", "medium")):
        assert handlers.on_style_field(field)(state, style[key]) == {}
    assert handlers.on_style_kind(state, "art") == {}
    assert handlers.on_custom_size("width")(state, state.width) == {}
    assert handlers.on_custom_size("height")(state, state.height) == {}


def test_element_palette_handler(handlers):
    out = handlers.on_element_palette(poster_state(), 1, "#abcdef", "#000000", "#111111", "#222222", "#333333")
    assert out["state"].elements[0]["color_palette"] == ["#ABCDEF"]
    assert out["el_palette_count"] == 1 and out["el_palette"][0] == "#ABCDEF"


@pytest.mark.parametrize("kind", ["obj", "text"])
def test_add_element_handlers(handlers, kind):
    out = handlers.on_add_element(kind)(EditorState())
    assert out["state"].elements[0]["type"] == kind and out["state"].selected == 0


def test_scene_handlers(handlers):
    out = handlers.on_high_level_description(EditorState(), "A flat logo.")
    assert out["state"].caption["high_level_description"] == "A flat logo."
    out = handlers.on_background_text(out["state"], "plain white")
    assert json.loads(out["json"])["compositional_deconstruction"]["background"] == "plain white"
    out = handlers.on_style_kind(out["state"], "photo")
    assert out["style_kind"] == "photo"
    for field, value in (("aesthetics", "clean"), ("lighting", "studio softbox"), ("photo_or_art", "85mm"),
                         ("medium", "photograph")):
        out = handlers.on_style_field(field)(out["state"], value)
    colors = ["#ff0000", "#00ff00"] + ["#000000"] * 14
    out = handlers.on_style_palette(out["state"], 2, *colors)
    style = out["state"].caption["style_description"]
    assert style == {"aesthetics": "clean", "lighting": "studio softbox", "photo": "85mm", "medium": "photograph",
                     "color_palette": ["#FF0000", "#00FF00"]}
    assert out["palette_count"] == 2 and out["palette"][:2] == ["#FF0000", "#00FF00"]


def test_undo_redo_handlers(handlers):
    state = handlers.on_add_element("obj")(EditorState())["state"]
    undone = handlers.on_undo(state)
    assert undone["state"].elements == []
    assert len(handlers.on_redo(undone["state"])["state"].elements) == 1


def test_the_toolbar_template_list_applies_the_size_like_the_gallery(handlers):
    """The toolbar's list and the gallery share one rule (ui/templates_gallery.py): the caption and the
    template's own size; an unknown name changes nothing."""
    from ideogram_app.caption.templates import template_format
    from ideogram_app.ui.templates_gallery import TemplateGallery

    out = TemplateGallery(handlers).on_choose(EditorState(), "app_ui_mock")
    fmt = template_format("app_ui_mock")
    assert out["state"].caption == load_template("app_ui_mock").to_dict()
    assert (out["width"], out["height"]) == (fmt.width, fmt.height) and fmt.height > fmt.width
    assert TemplateGallery(handlers).on_choose(EditorState(), "nope") == {}


def test_import_and_export_round_trip(handlers, tmp_path):
    state = poster_state()
    exported = handlers.on_export(state)["export_file"]
    assert exported["visible"] is True
    path = exported["value"]
    assert os.path.basename(path) == "caption.json" and str(output_dir()) not in path  # temporary, not an output
    assert json.loads(open(path, encoding="utf-8").read()) == state.caption
    out = handlers.on_import_file(EditorState(), path)
    assert out["state"].caption == state.caption
    bad = tmp_path / "bad.json"
    bad.write_text('{"compositional_deconstruction": ', encoding="utf-8")
    with pytest.warns(UserWarning, match=escape("bad.json")):
        assert escape("line 1") in handlers.on_import_file(EditorState(), str(bad))["json_status"]


def test_old_exports_and_previews_are_deleted_when_new_ones_are_made():
    old = scratch_file("caption.json")
    old.write_text("{}", encoding="utf-8")
    hour_ago = time.time() - SCRATCH_TTL_S - 60
    os.utime(old.parent, (hour_ago, hour_ago))
    fresh = scratch_file("caption.json")
    assert not old.parent.exists() and fresh.parent.is_dir()


def test_imports_are_bounded_and_messages_name_the_file_not_the_server_path(tmp_path):
    handlers = ComposeTab(ModelSlot(), Limits(max_upload_bytes=1024))
    big = tmp_path / "big.json"
    big.write_text(" " * 2048, encoding="utf-8")
    with pytest.warns(UserWarning, match="uploads are limited to"):
        out = handlers.on_import_file(EditorState(), str(big))
    assert "big&#46;json is 0&#46;0 MiB" in out["json_status"] and str(tmp_path) not in out["json_status"]
    binary = tmp_path / "cap.txt"
    binary.write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.warns(UserWarning, match="not UTF&#45;8 text"):
        out = handlers.on_import_file(EditorState(), str(binary))
    assert str(tmp_path) not in out["json_status"]
    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(plain)
    with pytest.warns(UserWarning) as caught:
        out = ComposeTab(ModelSlot()).on_open_png(EditorState(), str(plain))
    assert "plain&#46;png has no Ideogram" in out["json_status"]
    shown = [str(w.message) for w in caught if w.category is UserWarning]  # what gr.Warning sends
    assert shown and all(str(tmp_path) not in text for text in shown) and str(tmp_path) not in out["json_status"]


def test_png_metadata_is_checked_before_it_is_used(handlers, tmp_path):
    logo = to_json(load_template("logo"))
    for settings, expect in (({"width": 0, "height": 0, "seed": "abc", "preset": ["x"]}, (1024, 1024)),
                             ({"width": 100000, "height": 64, "seed": -3}, (1024, 1024)),
                             ({"width": 512, "height": 256, "seed": 2**40}, (512, 256))):
        path = tmp_path / "made.png"
        save_png(attach_metadata(Image.new("RGB", (16, 16)), make_record(logo, "caption", settings)), path)
        out = handlers.on_open_png(EditorState(), str(path))
        assert (out["width"], out["height"]) == expect and "seed" not in out and "preset" not in out
    path = tmp_path / "odd.png"
    save_png(attach_metadata(Image.new("RGB", (16, 16)), make_record(["not", "text"], "caption", {})), path)
    with pytest.warns(UserWarning, match="holds no prompt text"):
        assert handlers.on_open_png(EditorState(), str(path)) == {}


def test_size_handlers(handlers):
    out = handlers.on_aspect_preset(EditorState(), "16:9 · 1 MP")
    assert (out["width"], out["height"]) == (1360, 768) and out["canvas"]["aspect"] == pytest.approx(1360 / 768)
    bad = handlers.on_custom_size("width")(EditorState(), 1000)
    assert bad == {"size_note": "**Invalid size:** " + escape("Width × Height: width 1000 is not a multiple of 16; the "
                                                              "nearest valid widths are 992 and 1008")}
    too_big = handlers.on_custom_size("width")(EditorState(), 3072)
    assert set(too_big) == {"size_note"} and escape("Width × Height: width 3072 is outside the allowed 64-2048") in \
        too_big["size_note"]
    wide = handlers.on_custom_size("width")(EditorState(), 2048)
    assert wide["canvas"]["aspect"] == pytest.approx(2) and wide["aspect"] == "custom"
    flat = handlers.on_custom_size("height")(wide["state"], 128)
    assert (flat["width"], flat["height"]) == (2048, 128) and flat["state"].height == 128
    assert "height 128 is outside the recommended" in flat["size_note"]
    assert escape("aspect ratio 16.00:1") in flat["size_note"]
    assert "whole number" in handlers.on_custom_size("height")(EditorState(), None)["size_note"]
    hostile = handlers.on_custom_size("width")(EditorState(), "<img src=x onerror=alert(1)>")["size_note"]
    assert "<img" not in hostile and escape("<img src=x onerror=alert(1)>") in hostile


def test_canvas_background_handlers(handlers, tmp_path):
    out = handlers.on_canvas_background(EditorState(), "/some/ref.png", 0.3)
    assert out["canvas"]["background"] == "/some/ref.png" and out["canvas"]["opacity"] == 0.3
    with pytest.warns(UserWarning, match="generate an image first"):
        assert handlers.on_use_last_result(EditorState(), [], 0.5) == {}
    last = handlers.on_use_last_result(EditorState(), [{"path": "/r/1.png"}, {"path": "/r/2.png"}], 0.5)
    assert last["canvas"]["background"] == "/r/2.png"
    for opacity in (float("nan"), 2.0, "abc", None):
        with pytest.raises(gr.Error, match="Opacity must be a number from 0 to 1"):
            handlers.on_canvas_background(EditorState(), None, opacity)


def test_gallery_selection_with_a_hostile_index_changes_nothing(handlers):
    results = [{"path": "/r/1.png", "prompt": "x", "settings": {}}]
    for index in (5, -1, "0", [None], [], None, True):
        assert handlers.on_result_select(results, gr.SelectData(None, {"index": index, "value": None})) == {}


def test_generate_without_a_model_says_what_is_missing_as_a_warning_not_an_error(handlers):
    """An expected situation, not a failure: a plain-text warning toast (no Markdown to leak), the
    how-to (Markdown) in the status line, and no exception (so nothing is logged as a failure)."""
    with pytest.warns(UserWarning) as caught:
        out = handlers.on_generate(EditorState(), new_browser_id(), **TINY, request=None, progress=Progress())
    assert out == {"gen_status": HOW_TO_GET_WEIGHTS}
    (toast,) = [str(w.message) for w in caught]
    assert toast == escape(NO_MODEL) and "*" not in toast and "`" not in toast


def test_generate_rejects_an_invalid_caption_before_running(tiny_handlers):
    state = editor.set_element_field(poster_state(), "desc", "")
    with pytest.raises(gr.Error, match=r"elements\[0\]\.desc"):
        tiny_handlers.on_generate(state, new_browser_id(), **TINY, request=None, progress=Progress())


@pytest.mark.parametrize("change, message", [
    ({"width": 72}, "Width × Height: width 72 is not a multiple of 16; the nearest valid widths are 64 and 80"),
    ({"height": 48}, "Width × Height: height 48 is outside the allowed 64-2048 pixels"),
    ({"seed": -5}, "Seed: seed -5 is outside 0..4294967295; use -1 for a random seed"),
    ({"num_images": 9}, "Images: num_images is 9; choose 1 to 8"),
    ({"steps": 0}, "Steps: num_inference_steps must be a positive integer, got 0"),
    ({"steps": 201}, "Steps: 201 denoising steps asked for; choose 1 to 200"),
    ({"guidance": float("nan")}, "Guidance: cfg_scale must be a finite number"),
    ({"preset": "Fast"}, "Preset: preset 'Fast' is unknown"),
])
def test_generate_names_the_control_of_a_bad_setting(tiny_handlers, change, message):
    with pytest.raises(gr.Error) as err:
        tiny_handlers.on_generate(poster_state(), new_browser_id(), **{**TINY, **change}, request=None, progress=Progress())
    assert err.value.message.startswith(message)


def test_seed_minus_one_or_the_checkbox_pick_a_random_seed(tiny_handlers):
    seeds = {tiny_handlers.on_generate(poster_state(), new_browser_id(), **{**TINY, **change},
                                       request=None, progress=Progress())["seed"]
             for change in ({"seed": -1}, {"seed": 3, "randomize": True})}
    assert all(0 <= seed <= 2**32 - 1 for seed in seeds) and 3 not in seeds


def test_generate_select_overlay_and_open_in_editor(tiny_handlers, handlers, browser):
    progress = Progress()
    state = poster_state()
    out = tiny_handlers.on_generate(state, browser, **TINY, request=None, progress=progress)
    steps = [value for value, desc in progress.calls if isinstance(value, tuple)]
    assert steps == [(i, 12) for i in range(1, 13)]
    (result,) = out["results"]
    image = Image.open(result["path"])
    assert image.size == (80, 64)
    assert read_image_metadata(result["path"])["prompt"] == to_json(state.caption)
    assert out["gallery"][0][0] == result["path"] and "seed 7" in out["gallery"][0][1]
    assert Image.open(out["overlay"]).size == (80, 64)

    selected = handlers.on_result_select(out["results"], gr.SelectData(None, {"index": 0, "value": None}))
    assert selected["result_settings"]["settings"]["seed"] == 7 and selected["selected_result"] == 0
    assert selected["result_settings"]["prompt"] == state.caption

    opened = handlers.on_open_result(EditorState(), out["results"], 0)
    assert opened["state"].caption == state.caption
    assert (opened["width"], opened["height"], opened["seed"]) == (80, 64, 7)
    assert opened["preset"] == "Turbo · 12 steps" and opened["randomize"] is False

    from_png = handlers.on_open_png(EditorState(), result["path"])
    assert from_png["state"].caption == state.caption

    again = tiny_handlers.on_generate(state, browser, **{**TINY, "seed": 8}, request=None, progress=Progress())
    assert [r["settings"]["seed"] for r in again["results"]] == [7, 8]  # the folder's listing, oldest first
    assert again["selected_result"] == 1
    reloaded = handlers.on_page_load(None, browser)  # a reload (or a new server) lists them again
    assert [r["path"] for r in reloaded["results"]] == [r["path"] for r in again["results"]]
    assert handlers.on_page_load(None, new_browser_id())["results"] == []  # another browser sees none


def test_results_of_a_signed_in_user_are_theirs_in_any_browser(tiny_handlers, handlers):
    ann = gr.Request(username="ann", session_hash="s1")
    out = tiny_handlers.on_generate(poster_state(), new_browser_id(), **TINY, request=ann, progress=Progress())
    assert os.path.basename(os.path.dirname(out["results"][0]["path"])) == "user-ann"
    assert [r["path"] for r in handlers.on_page_load(None, new_browser_id(), ann)["results"]] == \
        [r["path"] for r in out["results"]]
    bob = gr.Request(username="bob", session_hash="s2")
    assert handlers.on_page_load(None, new_browser_id(), bob)["results"] == []


def test_generate_without_a_browser_id_asks_for_a_reload(tiny_handlers):
    with pytest.raises(gr.Error, match="reload the page"):
        tiny_handlers.on_generate(poster_state(), "../../x", **TINY, request=None, progress=Progress())


def test_a_run_out_of_memory_is_reported_and_the_next_run_works(tiny_handlers, monkeypatch):
    """Running out of memory cannot be caused on purpose on a CI machine; the pipeline's run raises
    torch's own OutOfMemoryError here, as it does on a GPU."""
    import torch

    pipe = tiny_handlers.slot.require().pipe
    with monkeypatch.context() as patch:
        patch.setattr(pipe, "run", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
        with pytest.raises(gr.Error) as err:
            tiny_handlers.on_generate(poster_state(), new_browser_id(), **TINY, request=None, progress=Progress())
    assert err.value.message == ("1 image(s) at 80×64 ran out of memory (OutOfMemoryError); try a smaller size or "
                                 "fewer images. The app keeps serving.")
    out = tiny_handlers.on_generate(poster_state(), new_browser_id(), **TINY, request=None, progress=Progress())
    assert len(out["results"]) == 1


def test_img2img_uses_the_input_image(tiny_handlers, tmp_path):
    source = tmp_path / "input.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(source)
    out = tiny_handlers.on_generate(poster_state(), new_browser_id(), **{**TINY, "input_image": str(source), "strength": 0.5},
                                    request=None, progress=Progress())
    settings = out["results"][0]["settings"]
    assert settings["img2img"] is True and settings["denoising_strength"] == 0.5
    with pytest.raises(gr.Error, match=r"Strength: denoising_strength must be in \(0, 1\]"):
        tiny_handlers.on_generate(poster_state(), new_browser_id(), **{**TINY, "input_image": str(source), "strength": 1.5},
                                  request=None, progress=Progress())


def test_open_png_without_metadata_is_explained(handlers, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(plain)
    with pytest.warns(UserWarning, match="no Ideogram Layout Studio metadata"):
        out = handlers.on_open_png(EditorState(), str(plain))
    assert "Cannot open" in out["json_status"] and str(tmp_path) not in out["json_status"]
    with pytest.warns(UserWarning, match="select a result"):
        assert handlers.on_open_result(EditorState(), [], None) == {}


def test_stop_ends_the_run_between_steps(tiny_handlers):
    request = gr.Request(session_hash="stopper")
    other = gr.Request(session_hash="bystander")
    with pytest.warns(UserWarning, match="Nothing is running"):
        assert tiny_handlers.on_stop(request) == {}

    def stop_at_step_3(value):
        if value == (3, 12):
            with pytest.warns(UserWarning, match="Nothing is running"):  # not someone else's run
                tiny_handlers.on_stop(other)
            tiny_handlers.on_stop(request)

    out = tiny_handlers.on_generate(poster_state(), new_browser_id(), **TINY, request=request,
                                    progress=Progress(stop_at_step_3))
    assert out["gen_status"] == "Stopped after step 3; nothing was saved."
    assert "results" not in out


def test_two_sessions_do_not_share_state(handlers):
    """gr.State deep-copies its initial value per session; handlers never mutate their input."""
    first = EditorState()
    drawn = handlers.on_canvas_edit(first, canvas_event({"op": "draw", "kind": "obj", "rect": [0, 0, 50, 50],
                                                         "size": [100, 100]}))["state"]
    assert first.elements == [] and len(drawn.elements) == 1


def test_steps_and_guidance_override_the_preset(tiny_handlers):
    progress = Progress()
    out = tiny_handlers.on_generate(poster_state(), new_browser_id(), **{**TINY, "steps": 3, "guidance": 4.5},
                                    request=None, progress=progress)
    settings = out["results"][-1]["settings"]
    assert (settings["steps"], settings["guidance"]) == (3, [4.5] * 3)
    assert [value for value, _ in progress.calls if isinstance(value, tuple)] == [(1, 3), (2, 3), (3, 3)]
    assert "3 steps" in out["gen_status"]


def test_a_run_reports_phases_time_left_and_previews_to_the_live_view(tiny_handlers):
    """While the run is on, the page's timer reads its phase, time left and newest preview (each tick
    only when something changed); after it, nothing is left behind for the session."""
    request = gr.Request(session_hash="watcher")
    ticks = []

    def tick(value):
        ticks.append(tiny_handlers.on_live_tick(ticks[-1].get("live_seen", 0) if ticks else 0, request))

    start = tiny_handlers.on_run_start(request)
    assert start["generate"]["interactive"] is False and start["generate"]["value"] == RUNNING_LABEL
    assert start["stop"]["variant"] == "stop"
    assert start["gen_status"] == "" and start["live_status"]["visible"] is True  # the last run's status goes
    progress = Progress(tick)
    tiny_handlers.on_generate(poster_state(), new_browser_id(), **TINY, request=request, progress=progress)
    labels = [desc for value, desc in progress.calls if isinstance(value, tuple)]
    assert labels[0].startswith("denoising step 1/12 · Step 1 of 12 · about ") and "decoding included" in labels[0]
    assert labels[-1].startswith("denoising step 12/12 · Decoding… about ")
    shown = [t for t in ticks if t]
    assert any("live_preview" in t for t in shown)
    preview = next(t["live_preview"]["value"] for t in shown if "live_preview" in t)
    assert preview.size[0] / preview.size[1] == pytest.approx(80 / 64)
    versions = [t["live_seen"] for t in shown]
    assert versions == sorted(set(versions))  # each tick saw something new
    assert tiny_handlers.on_live_tick(0, request) == {}  # the run is over: nothing to show
    end = tiny_handlers.on_run_end(request)
    assert end["generate"]["interactive"] is True and end["generate"]["value"] == GENERATE_LABEL
    assert end["stop"]["variant"] == "secondary"
    assert end["live_preview"]["visible"] is False and end["live_status"]["visible"] is False


def test_a_second_run_estimates_decoding_from_the_first(tiny_handlers):
    pipe = tiny_handlers.slot.require().pipe
    tiny_handlers.on_generate(poster_state(), new_browser_id(), **TINY, request=None, progress=Progress())
    measured = tiny_handlers.decode_times.estimate(pipe, 80 * 64 / 1e6)
    assert measured is not None and measured > 0
    assert tiny_handlers.decode_times.estimate(pipe, 2 * 80 * 64 / 1e6) == pytest.approx(2 * measured)


def test_an_empty_start_shows_no_error(handlers):
    out = handlers.on_page_load(None, new_browser_id())
    assert out["issues_all"] == BLANK_NOTE and out["issues_scene"] == "" and out["issues_element"] == ""
    assert "error" not in out["issues_all"]
    drawn = handlers.on_canvas_edit(out["state"], canvas_event({"op": "draw", "kind": "obj", "rect": [10, 10, 50, 50],
                                                               "size": [100, 100]}))
    assert "error" in drawn["issues_all"]  # once something is there, the checks are back


def test_plain_text_mode_hides_the_canvas_and_shows_why(handlers):
    """The canvas view is rendered by the wiring: in plain-text mode the canvas (its tools and any
    boxes) is hidden and the note shown; a caption brings it back."""
    with gr.Blocks() as demo:
        ui = Components(demo)
        handlers.build(ui)
    view = ui._views["canvas"]
    canvas, note = view.components
    plain = handlers.on_json_input(poster_state(), "a fox in the snow at dawn")
    rendered = view.render(plain["canvas"], plain)
    assert rendered[canvas]["visible"] == "hidden" and rendered[note]["visible"] is True
    assert note.value == PLAIN_TEXT_NOTE
    back = handlers.on_json_input(plain["state"], to_json(load_template("logo")))
    rendered = view.render(back["canvas"], back)
    assert rendered[canvas]["visible"] is True and rendered[note]["visible"] is False
