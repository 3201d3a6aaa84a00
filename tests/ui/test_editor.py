"""Editor operations: canvas gestures, inspector and scene fields, JSON paste, undo/redo.

Expected boxes are worked out by hand from the pixel rectangles (y first, 0-1000 relative to the
stage height/width), independently of the caption core's conversion."""
import pytest

from ideogram_app.caption import verify
from ideogram_app.caption.rules import ART_STYLE_KEYS, OBJ_KEYS, PHOTO_STYLE_KEYS, TEXT_KEYS
from ideogram_app.ui import editor
from ideogram_app.ui.editor import CanvasOpError, apply_canvas_op
from ideogram_app.ui.state import EditorState


def draw(state, rect, size=(400, 400), kind="obj"):
    return apply_canvas_op(state, {"op": "draw", "kind": kind, "rect": list(rect), "size": list(size)})


def test_draw_converts_stage_pixels_to_yx_model_units():
    # 400x200 stage: x 40..120 -> 100..300, y 20..100 -> 100..500
    state = draw(EditorState(), (40, 20, 120, 100), size=(400, 200), kind="text")
    assert state.elements == [{"type": "text", "bbox": [100, 100, 500, 300], "text": "", "desc": ""}]
    assert state.selected == 0


def test_draw_accepts_corners_in_any_order_and_clamps_to_the_stage():
    state = draw(EditorState(), (500, 300, 100, -50))
    assert state.elements[0]["bbox"] == [0, 250, 750, 1000]


def test_move_keeps_the_box_size_and_stays_inside_the_grid():
    state = draw(EditorState(), (40, 40, 120, 200))  # [100, 100, 500, 300]
    moved = apply_canvas_op(state, {"op": "move", "index": 0, "rect": [80, 0, 160, 160], "size": [400, 400]})
    assert moved.elements[0]["bbox"] == [0, 200, 400, 400]
    pushed = apply_canvas_op(moved, {"op": "move", "index": 0, "rect": [390, 390, 470, 550], "size": [400, 400]})
    y0, x0, y1, x1 = pushed.elements[0]["bbox"]
    assert (y1 - y0, x1 - x0) == (400, 200) and y1 <= 1000 and x1 <= 1000


def test_resize_sets_the_new_rectangle():
    state = draw(EditorState(), (40, 40, 120, 200))
    resized = apply_canvas_op(state, {"op": "resize", "index": 0, "rect": [40, 40, 200, 360], "size": [400, 400]})
    assert resized.elements[0]["bbox"] == [100, 100, 900, 500]


def test_nudge_moves_in_model_units_and_clamps():
    state = draw(EditorState(), (0, 0, 40, 40))  # [0, 0, 100, 100]
    nudged = apply_canvas_op(state, {"op": "nudge", "index": 0, "dx": 10, "dy": -5})
    assert nudged.elements[0]["bbox"] == [0, 10, 100, 110]


def test_delete_duplicate_and_reorder():
    state = draw(draw(EditorState(), (0, 0, 40, 40)), (100, 100, 200, 200), kind="text")
    dup = apply_canvas_op(state, {"op": "duplicate", "index": 0})
    assert len(dup.elements) == 3 and dup.selected == 1
    assert dup.elements[1]["bbox"] == [20, 20, 120, 120]
    forward = apply_canvas_op(state, {"op": "forward", "index": 0})
    assert [e["type"] for e in forward.elements] == ["text", "obj"] and forward.selected == 1
    backward = apply_canvas_op(forward, {"op": "backward", "index": 1})
    assert [e["type"] for e in backward.elements] == ["obj", "text"]
    deleted = apply_canvas_op(state, {"op": "delete", "index": 1})
    assert [e["type"] for e in deleted.elements] == ["obj"] and deleted.selected == 0


def test_duplicate_takes_the_canvas_offset_and_stays_inside_the_grid():
    state = draw(EditorState(), (0, 0, 40, 40))  # [0, 0, 100, 100]
    dup = apply_canvas_op(state, {"op": "duplicate", "index": 0, "dy": 35, "dx": 10})
    assert dup.elements[1]["bbox"] == [35, 10, 135, 110]
    low = draw(EditorState(), (0, 380, 40, 400))  # [950, 0, 1000, 100]: no room below, the canvas sends -35
    assert apply_canvas_op(low, {"op": "duplicate", "index": 0, "dy": -35, "dx": 10}).elements[1]["bbox"] == [
        915, 10, 965, 110]


def test_reorder_moves_one_element_to_a_position_and_keeps_it_selected():
    state = EditorState()
    for k in range(4):
        state = draw(state, (0, 0, 40 + k, 40))
    widths = lambda s: [e["bbox"][3] for e in s.elements]  # [100, 103, 105, 108] tell them apart
    assert widths(state) == [100, 103, 105, 108]
    down = apply_canvas_op(state, {"op": "reorder", "index": 0, "to": 2})
    assert widths(down) == [103, 105, 100, 108] and down.selected == 2
    up = apply_canvas_op(down, {"op": "reorder", "index": 3, "to": 0})
    assert widths(up) == [108, 103, 105, 100] and up.selected == 0
    assert apply_canvas_op(up, {"op": "undo"}).elements == down.elements  # one step each


def test_boxes_sets_several_boxes_as_one_undo_step_and_keeps_the_selection():
    state = draw(draw(draw(EditorState(), (0, 0, 40, 40)), (40, 40, 80, 80)), (80, 80, 120, 120))
    assert state.selected == 2
    # a canvas in model units: size 1000x1000, rect [x0, y0, x1, y1]
    aligned = apply_canvas_op(state, {"op": "boxes", "size": [1000, 1000], "boxes": [
        {"index": 1, "rect": [0, 100, 100, 200]}, {"index": 2, "rect": [0, 200, 100, 300]}]})
    assert [e["bbox"] for e in aligned.elements] == [[0, 0, 100, 100], [100, 0, 200, 100], [200, 0, 300, 100]]
    assert aligned.selected == 2
    assert apply_canvas_op(aligned, {"op": "undo"}).elements == state.elements


def test_delete_many_removes_a_multi_selection_in_one_step():
    state = draw(draw(draw(EditorState(), (0, 0, 40, 40)), (40, 40, 80, 80), kind="text"), (80, 80, 120, 120))
    left = apply_canvas_op(state, {"op": "delete_many", "indices": [2, 0]})
    assert [e["bbox"] for e in left.elements] == [[100, 100, 200, 200]] and left.selected is None
    assert apply_canvas_op(left, {"op": "undo"}).elements == state.elements


def test_undo_and_redo_walk_the_history():
    state = draw(draw(EditorState(), (0, 0, 40, 40)), (100, 100, 200, 200))
    once = apply_canvas_op(state, {"op": "undo"})
    assert len(once.elements) == 1
    twice = apply_canvas_op(once, {"op": "undo"})
    assert twice.elements == [] and twice.selected is None
    again = apply_canvas_op(apply_canvas_op(twice, {"op": "redo"}), {"op": "redo"})
    assert again.elements == state.elements
    assert apply_canvas_op(EditorState(), {"op": "undo"}).elements == []


def test_typing_in_one_field_is_one_undo_step():
    state = draw(EditorState(), (0, 0, 40, 40))
    for text in ("a", "ap", "apple"):
        state = editor.set_element_field(state, "desc", text)
    assert state.elements[0]["desc"] == "apple"
    assert editor.undo(state).elements[0]["desc"] == ""


@pytest.mark.parametrize("payload, where", [
    ({"op": "draw", "kind": "circle", "rect": [0, 0, 9, 9], "size": [10, 10]}, "kind"),
    ({"op": "draw", "kind": "obj", "rect": [0, 0, 9], "size": [10, 10]}, "rect"),
    ({"op": "draw", "kind": "obj", "rect": [0, 0, 9, 9], "size": [0, 10]}, "size"),
    ({"op": "move", "index": 7, "rect": [0, 0, 9, 9], "size": [10, 10]}, "element 7"),
    ({"op": "explode", "index": 0}, "unknown canvas operation"),
    ({"op": "draw", "kind": "obj", "rect": [5, 5, 5, 9], "size": [10, 10]}, "empty"),
    ({"op": "nudge", "index": 0, "dx": 1.5, "dy": 0}, "integer dy/dx"),
    ({"op": "duplicate", "index": 0, "dx": 0, "dy": 5000}, "within ±1000"),
    ({"op": "reorder", "index": 0, "to": 1}, "to=1"),
    ({"op": "reorder", "index": 0, "to": True}, "to=True"),
    ({"op": "boxes", "size": [10, 10], "boxes": []}, "1..1 boxes, got 0"),
    ({"op": "delete_many", "indices": [0, 0]}, "1..1 indices, got 2"),
    ({"op": "delete_many", "indices": [4]}, "element 4"),
    ({"op": "boxes", "size": [10, 10], "boxes": "all"}, "got str"),
    ({"op": "boxes", "size": [10, 10], "boxes": [[0, [0, 0, 5, 5]]]}, "item 0 must be an object"),
    ({"op": "boxes", "size": [10, 10], "boxes": [{"index": 3, "rect": [0, 0, 5, 5]}]}, "element 3"),
    ({"op": "boxes", "size": [10, 10], "boxes": [{"index": 0, "rect": [0, 0, 5, float("nan")]}]}, "rect"),
    ({"op": "boxes", "size": [10, 10], "boxes": [{"index": 0, "rect": [5, 0, 5, 9]}]}, "empty box"),
])
def test_untrusted_canvas_payloads_are_rejected_with_the_reason(payload, where):
    state = draw(EditorState(), (0, 0, 40, 40))
    with pytest.raises(CanvasOpError, match=where):
        apply_canvas_op(state, payload)


def test_switching_type_keeps_the_canonical_key_order():
    state = editor.set_element_field(draw(EditorState(), (0, 0, 40, 40)), "desc", "a sign")
    as_text = editor.set_element_field(state, "type", "text")
    assert tuple(as_text.elements[0]) == TEXT_KEYS[:4]
    as_text = editor.set_element_field(as_text, "text", "OPEN\nDAILY")
    back = editor.set_element_field(as_text, "type", "obj")
    assert tuple(back.elements[0]) == OBJ_KEYS[:3] and back.elements[0]["desc"] == "a sign"


def test_palette_is_normalised_to_upper_case_hex():
    state = draw(EditorState(), (0, 0, 40, 40))
    colors = editor.palette_from_pickers(3, ["#ff00aa", "rgb(16, 32, 255)", "rgba(0, 0, 0, 0.5)", "#123456"])
    assert colors == ["#FF00AA", "#1020FF", "#000000"]
    state = editor.set_element_field(state, "palette", colors)
    assert state.elements[0]["color_palette"] == colors
    cleared = editor.set_element_field(state, "palette", [])
    assert "color_palette" not in cleared.elements[0]


def test_no_box_toggle_removes_and_restores_a_box():
    state = draw(EditorState(), (0, 0, 40, 40))
    unboxed = editor.set_element_field(state, "has_box", False)
    assert "bbox" not in unboxed.elements[0]
    boxed = editor.set_element_field(unboxed, "has_box", True)
    assert boxed.elements[0]["bbox"] == editor.DEFAULT_BOX


def style_of(state):
    return state.caption.get("style_description")


def test_style_block_follows_the_photo_or_art_key_order():
    photo = editor.set_style_kind(EditorState(), "photo")
    for field, value in (("aesthetics", "crisp"), ("lighting", "soft daylight"), ("photo_or_art", "35mm, f/2"),
                         ("medium", "photograph"), ("palette", ["#AABBCC"])):
        photo = editor.set_style_field(photo, field, value)
    assert tuple(style_of(photo)) == PHOTO_STYLE_KEYS
    assert style_of(photo)["photo"] == "35mm, f/2"
    art = editor.set_style_kind(photo, "art")
    assert tuple(style_of(art)) == ART_STYLE_KEYS
    assert style_of(art)["art_style"] == "35mm, f/2" and "photo" not in style_of(art)
    assert style_of(editor.set_style_kind(art, "none")) is None


def test_style_fields_without_a_style_block_change_nothing():
    state = EditorState()
    assert editor.set_style_field(state, "lighting", "dusk") is state
    with pytest.raises(ValueError, match="unknown style field"):
        editor.set_style_field(state, "mood", "calm")


def test_scene_text_fields():
    state = editor.set_background(editor.set_high_level_description(EditorState(), "A poster."), "cream paper")
    assert state.caption["high_level_description"] == "A poster."
    assert state.caption["compositional_deconstruction"]["background"] == "cream paper"
    assert "high_level_description" not in editor.set_high_level_description(state, "").caption


def test_invalid_json_leaves_the_caption_untouched_and_says_where():
    state = draw(EditorState(), (0, 0, 40, 40))
    result = editor.ingest_json(state, '{\n  "compositional_deconstruction": {\n    "background": "x",,\n')
    assert not result.accepted and result.state is state
    assert "line 3, column" in result.status


def test_json_that_is_not_a_caption_reports_the_paths():
    result = editor.ingest_json(EditorState(), '{"compositional_deconstruction": {"elements": []}}')
    assert not result.accepted
    assert any(i.path.startswith("compositional_deconstruction") for i in result.issues)


def test_pasted_json_is_canonicalised_and_plain_text_is_kept_as_text():
    pasted = ('{"compositional_deconstruction": {"elements": [{"desc": "a cat", "bbox": [1, 2, 3, 4], '
              '"type": "obj"}], "background": "grass"}}')
    result = editor.ingest_json(EditorState(), pasted)
    assert result.accepted
    assert list(result.state.caption["compositional_deconstruction"]) == ["background", "elements"]
    assert list(result.state.elements[0]) == ["type", "bbox", "desc"]
    prose = editor.ingest_json(result.state, "a cat on the grass")
    assert prose.accepted and prose.state.plain_text == "a cat on the grass"
    assert prose.state.caption == result.state.caption


def test_an_edited_template_stays_valid():
    from ideogram_app.caption import load_template

    state = editor.load_caption(EditorState(), load_template("poster_headline"))
    state = apply_canvas_op(state, {"op": "move", "index": 1, "rect": [0, 0, 100, 100], "size": [400, 400]})
    assert [i for i in verify(state.caption) if i.severity == "error"] == []
