"""The template gallery's handlers, called directly: a template brings its size, the thumbnails have
the template's aspect ratio, and unsaved work is only replaced after the user confirms."""
import gradio as gr

from ideogram_app.caption import load_template
from ideogram_app.caption.templates import list_templates, template_format
from ideogram_app.limits import DEFAULT_LIMITS
from ideogram_app.ui import editor
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.state import EditorState
from ideogram_app.ui.tabs.compose import ComposeTab
from ideogram_app.ui.templates_gallery import (TemplateGallery, fitted_size, gallery_items, has_unsaved_work,
                                               thumbnail)

APP_MOCK = list_templates().index("app_ui_mock")


def pick(index: int) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": None, "selected": True})


def test_picking_the_app_mock_on_an_empty_canvas_loads_it_portrait():
    gallery = TemplateGallery(ComposeTab(ModelSlot()))
    out = gallery.on_pick(EditorState(), pick(APP_MOCK))
    assert (out["width"], out["height"]) == (768, 1360) and out["aspect"] == "9:16 · 1 MP"
    assert (out["state"].width, out["state"].height) == (768, 1360)
    assert out["canvas"]["aspect"] == 768 / 1360
    assert out["state"].caption == load_template("app_ui_mock").to_dict()
    assert out["template_confirm"] is None


def test_unsaved_work_is_replaced_only_after_confirming():
    gallery = TemplateGallery(ComposeTab(ModelSlot()))
    mine = editor.apply_canvas_op(EditorState(), {"op": "draw", "kind": "obj", "rect": [10, 10, 40, 40], "size": [100, 100]})
    assert has_unsaved_work(mine)
    asked = gallery.on_pick(mine, pick(APP_MOCK))
    assert set(asked) == {"template_pending", "template_confirm"}  # nothing replaced yet
    assert asked["template_pending"] == "app_ui_mock" and "Replace your layout" in asked["template_confirm"]
    kept = gallery.on_keep()
    assert kept["template_pending"] is None and kept["template_confirm"] is None
    replaced = gallery.on_replace(mine, "app_ui_mock")
    assert replaced["state"].caption == load_template("app_ui_mock").to_dict()
    undone = editor.apply_canvas_op(replaced["state"], {"op": "undo"})
    assert undone.caption == mine.caption  # the replaced work is one Undo away


def test_templates_as_shipped_and_the_empty_start_are_not_unsaved_work():
    assert not has_unsaved_work(EditorState())
    for name in list_templates():
        assert not has_unsaved_work(editor.load_caption(EditorState(), load_template(name)))
    state = editor.load_caption(EditorState(), load_template("logo"))
    state.caption["compositional_deconstruction"]["background"] = "night sky"
    assert has_unsaved_work(state)
    plain = EditorState(plain_text="a red fox")
    assert has_unsaved_work(plain) and not has_unsaved_work(EditorState(plain_text="  "))


def test_thumbnails_have_each_templates_aspect():
    items = gallery_items()
    assert [label for _, label in items][APP_MOCK] == "App UI mock (phone) · 9:16"
    for name, (image, _) in zip(list_templates(), items):
        fmt = template_format(name)
        assert max(image.size) == 256
        assert abs(image.width / image.height - fmt.width / fmt.height) < 0.01, name
    assert thumbnail("logo") is thumbnail("logo")  # rendered once per process


def test_a_server_with_a_smaller_max_side_gets_the_aspect_scaled_down():
    from dataclasses import replace

    small = replace(DEFAULT_LIMITS, max_side=512, max_pixels=512 ** 2)
    assert fitted_size(768, 1360, small) == (288, 512)
    assert fitted_size(768, 1360, DEFAULT_LIMITS) == (768, 1360)
    out = TemplateGallery(ComposeTab(ModelSlot(), small)).on_pick(EditorState(), pick(APP_MOCK))
    assert (out["width"], out["height"]) == (288, 512)


def test_out_of_range_picks_change_nothing():
    gallery = TemplateGallery(ComposeTab(ModelSlot()))
    assert gallery.on_pick(EditorState(), pick(len(list_templates()))) == {}
    assert gallery.on_pick(EditorState(), pick(-1)) == {}
    assert gallery.on_replace(EditorState(), "../etc/passwd") == {"template_pending": None, "template_confirm": None}


def test_choosing_by_name_follows_the_same_rules():
    gallery = TemplateGallery(ComposeTab(ModelSlot()))
    assert gallery.on_choose(EditorState(), "portrait_photo")["height"] == 1184
    assert gallery.on_choose(EditorState(), "nope") == {}
    assert gallery.on_choose(EditorState(plain_text="mine"), "logo")["template_pending"] == "logo"
