"""What the compose tab shows for a state: JSON text, canvas value, issues, token counter; user
text in issue lists and titles stays text in Markdown and HTML."""
import json
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from ideogram_app.caption import load_template, to_json, verify
from ideogram_app.ui import editor, markup, views
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


# ---- escaping: user text shown as Markdown or HTML stays text --------------------------------
# Oracle: markdown-it-py renders the Markdown the way CommonMark says (Gradio's browser renderer
# follows CommonMark too), and html.parser reads the result back as a browser would.

HOSTILE = ["<img src=x onerror=alert(1)>", "a`b", "``x``", "**bold**", "[link](javascript:alert(1))", "</div>",
           "<script>alert(1)</script>", "_em_", "![i](http://x/y.png)", "# heading", "1. item", "    code",
           "&lt;img&gt;", "&#60;", "x\\`y", "https://example.com", "$$x$$", "a|b", "ünï “q” 😀"]


class _Page(HTMLParser):
    """Element names and text of an HTML fragment, as a browser would build them."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.code = [], [], []
        self._in_code = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_code = tag == "code"
        if tag == "code":
            self.code.append("")

    def handle_endtag(self, tag):
        self._in_code = self._in_code and tag != "code"

    def handle_data(self, data):
        self.text.append(data)
        if self._in_code:
            self.code[-1] += data


def _markdown(text: str) -> _Page:
    return _Page(MarkdownIt("commonmark").render(text))


@pytest.mark.parametrize("hostile", HOSTILE)
def test_escaped_text_shows_exactly_and_makes_no_elements(hostile):
    in_markdown = _markdown("Note: " + markup.escape(hostile))
    assert in_markdown.tags == ["p"] and "".join(in_markdown.text).strip() == "Note: " + hostile
    in_html = _Page("<p>" + markup.escape(hostile) + "</p>")
    assert in_html.tags == ["p"] and "".join(in_html.text) == hostile
    assert _markdown(markup.code(hostile)).code == [hostile]


def test_escape_removes_what_could_change_structure_or_break_the_response():
    assert markup.escape("a\nb\r\nc\u2028d") == "a b c d"  # no new Markdown block can start
    assert markup.escape("  x").startswith("&#32;&#32;")  # no indented code block at a line start
    assert markup.escape("a\ud800b\x00c\u202ed") == "a\ufffdb\ufffdc\ufffdd"  # UTF-8-safe, no bidi override
    assert markup.escape(42) == "42"


def _issue_rows(hostile: str):
    key = f"x{hostile}"
    caption = {"compositional_deconstruction": {"background": hostile, "elements": [{"type": hostile, "desc": "d",
                                                                                      key: 1}]}}
    return verify(caption), key


@pytest.mark.parametrize("hostile", HOSTILE)
def test_issue_list_shows_hostile_keys_and_values_as_text(hostile):
    issues, key = _issue_rows(hostile)
    page = _markdown(views.issue_summary(issues))
    assert set(page.tags) <= {"p", "strong", "ul", "li", "code"}
    assert page.tags.count("strong") == 1 + len(issues)  # the summary and one severity per issue, nothing else
    paths = [i.path.removeprefix("compositional_deconstruction.") for i in issues if i.path]
    assert f"elements[0].{key}" in paths and page.code == paths  # each path, hostile key included, is one <code>
    text = "".join(page.text)
    assert all(item.message in text for item in issues)


def test_issue_lists_are_cut_after_a_bound():
    issues = verify({"compositional_deconstruction": {"background": "b", "elements": [{"type": "obj"}] * 120}})
    rows = views.issues_markdown(issues).splitlines()
    assert len(rows) == views.LISTED_ISSUES + 1 and rows[-1] == f"- … and {len(issues) - views.LISTED_ISSUES} more"


def test_element_title_is_escaped():
    state = editor.load_caption(EditorState(), load_template("poster_headline"))
    title = views.inspector_values(state)["el_title"]
    page = _markdown(title)
    assert page.tags == ["p"]
    assert "".join(page.text).strip() == (f"Element 1 of {len(state.elements)} · bbox [y_min, x_min, y_max, x_max] = "
                                          f"{state.elements[0]['bbox']}")
