"""What the compose tab shows for a state: JSON text, canvas value, issues, token counter."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ideogram_app.caption import load_template, to_json
from ideogram_app.ui import editor, views
from ideogram_app.ui.canvas import TEMPLATE, LayoutCanvas
from ideogram_app.ui.state import EditorState

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60)
@given(json_values)
def test_pretty_json_is_the_same_json(value):
    assert json.loads(views.pretty_json(value)) == value


def test_pretty_json_keeps_boxes_on_one_line_and_non_ascii_literal():
    caption = load_template("poster_headline").to_dict()
    text = views.pretty_json(caption)
    assert '"bbox": [50, 80, 230, 920]' in text
    assert "JULY 12 – 14" in text
    assert json.loads(text) == caption


def test_json_text_shows_plain_text_as_typed():
    state = editor.ingest_json(EditorState(), "a red bicycle").state
    assert views.json_text(state) == "a red bicycle"


def test_canvas_value_carries_boxes_selection_aspect_and_issues():
    state = editor.load_caption(EditorState(), load_template("poster_headline"))
    state.width, state.height = 768, 1024
    value = views.canvas_value(state)
    assert value["aspect"] == 0.75 and value["selected"] == 0
    assert [e["bbox"] for e in value["elements"]] == [e.get("bbox") for e in state.elements]
    assert value["elements"][0]["text"] == "SUMMER JAZZ\nNIGHTS"
    broken = editor.set_element_field(state, "desc", "")
    assert "empty" in views.canvas_value(broken)["elements"][0]["issue"]


def test_issues_are_split_between_the_selected_element_and_the_scene():
    state = editor.apply_canvas_op(EditorState(), {"op": "draw", "kind": "text", "rect": [0, 0, 9, 9],
                                                   "size": [10, 10]})
    issues = views.caption_issues(state)
    element, scene = views.split_issues(state, issues)
    assert element and all(i.path.startswith("compositional_deconstruction.elements[0]") for i in element)
    assert any(i.path == "compositional_deconstruction.background" for i in scene)
    assert "error(s)" in views.issue_summary(issues)
    assert views.issue_summary([]).startswith("The caption is valid")


def test_token_label_is_exact_with_a_tokenizer_and_an_estimate_without():
    prompt = to_json(load_template("logo"))
    exact = views.token_label(prompt, lambda text: 1234)
    assert exact.startswith("**1234 / 2048 tokens**") and "exact" in exact
    estimate = views.token_label(prompt)
    assert estimate.startswith("**~") and "estimate" in estimate
    assert "over the limit" in views.token_label(prompt, lambda text: 2049)


def test_inspector_and_scene_values_follow_the_state():
    state = editor.load_caption(EditorState(), load_template("poster_headline"))
    inspector = views.inspector_values(state)
    assert inspector["el_type"] == "text" and inspector["el_text"] == "SUMMER JAZZ\nNIGHTS"
    assert inspector["el_palette_count"] == 2 and inspector["el_palette"][:2] == ["#E4572E", "#17324D"]
    assert len(inspector["el_palette"]) == views.ELEMENT_PALETTE_SLOTS
    scene = views.scene_values(state)
    assert scene["style_kind"] == "art" and scene["medium"] == "graphic_design"
    assert scene["palette_count"] == 4 and len(scene["palette"]) == views.IMAGE_PALETTE_SLOTS
    assert views.inspector_values(EditorState())["el_title"].startswith("No element selected")


def test_canvas_component_is_safe_and_static():
    canvas = LayoutCanvas(elem_id="layout-canvas")
    # No ${...} in the template: Gradio re-renders templates on value changes, and a static one means
    # the stage DOM (and an ongoing drag) is never replaced; the JS draws boxes itself.
    assert "${" not in TEMPLATE and "{{" not in TEMPLATE
    assert "innerHTML" not in canvas.js_on_load and "textContent" in canvas.js_on_load
    assert "http" not in canvas.js_on_load.replace("https?:", "")  # no CDN or remote code
    assert canvas.elem_id == "layout-canvas"
    assert canvas.api_info()["properties"]["elements"]["type"] == "array"
