"""The Expand button and the Model tab's prompt-expansion settings, handlers called directly against a
real chat-completions server on loopback (tests/expand/conftest.py): the caption drawn, the user's
elements kept, one Undo back (plain text included), repairs noted, failures as messages that show a
visitor neither the server's URL nor its paths, and the settings operator-only with a write-only key."""
import json

import gradio as gr
import pytest

from ideogram_app.caption import load_template, verify
from ideogram_app.ui import editor
from ideogram_app.ui.expansion import NOT_SET_UP, Expander, ExpandSettings
from ideogram_app.ui.markup import escape
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.policy import Policy
from ideogram_app.ui.state import EditorState
from ideogram_app.ui.tabs.compose import ComposeTab
from ideogram_app.ui.tabs.model import ModelTab
from tests.expand.conftest import ENV_NAMES, ChatServer, Reply, completion, error_reply

IDEA = 'a night market poster, title "LATE BITES"'
VISITOR = Policy(host="0.0.0.0")  # a LAN address without logins: nobody is an operator


def answer(*, swapped: bool = False) -> dict:
    """What a model might write: a lantern and the quoted title (its box written upside down when
    `swapped`, which the repairs sort)."""
    title_box = [220, 900, 60, 100] if swapped else [60, 100, 220, 900]
    return {"high_level_description": "A flat graphic poster of a busy night market under paper lanterns.",
            "style_description": {"aesthetics": "warm, lively", "lighting": "lantern glow", "medium": "graphic_design",
                                  "art_style": "flat vector shapes", "color_palette": ["#1B2A41", "#F4A259"]},
            "compositional_deconstruction": {
                "background": "A dark blue night sky over rows of food stalls.",
                "elements": [{"type": "obj", "bbox": [300, 350, 800, 650], "desc": "A red paper lantern."},
                             {"type": "text", "bbox": title_box, "text": "LATE BITES",
                              "desc": "Bold condensed cream title, centred."}]}}


@pytest.fixture(autouse=True)
def no_expand_environment(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


@pytest.fixture
def expander(chat_server):
    return Expander(ExpandSettings(url=chat_server.url, model="test-model", key="sk-secret-123"))


def compose(expander, policy=Policy()):
    return ComposeTab(ModelSlot(), policy=policy, expander=expander)


def with_idea(text: str = IDEA) -> EditorState:
    return editor.set_high_level_description(EditorState(), text)


def test_expand_draws_the_caption_and_one_undo_restores_the_layout(chat_server, expander):
    chat_server.script(completion(json.dumps(answer(swapped=True))))
    tab = compose(expander)
    before = with_idea()
    out = tab.on_expand(before, IDEA, "")
    state = out["state"]
    assert [e["type"] for e in state.elements] == ["obj", "text"]
    assert state.elements[1] == {"type": "text", "bbox": [60, 100, 220, 900], "text": "LATE BITES",
                                 "desc": "Bold condensed cream title, centred."}
    assert verify(state.caption) == [] and state.selected == 0
    assert [e["bbox"] for e in out["canvas"]["elements"]] == [[300, 350, 800, 650], [60, 100, 220, 900]]
    assert '"LATE BITES"' in out["json"] and out["hld"].startswith("A flat graphic poster")
    assert "bbox&#95;swapped" in out["expand_note"]  # noted, escaped for Markdown
    assert "2 element" in out["expand_note"]
    assert json.loads(out["saved"]["caption"]) == state.caption
    (request,) = chat_server.requests
    assert request["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert IDEA in request["body"]["messages"][1]["content"]
    assert "1024x1024 pixels" in request["body"]["messages"][1]["content"]
    undone = tab.on_undo(state)
    assert undone["state"].caption == before.caption and undone["canvas"]["elements"] == []
    assert undone["hld"] == IDEA
    assert tab.on_redo(undone["state"])["state"].caption == state.caption


def test_the_current_elements_are_kept_unchanged(chat_server, expander):
    state = editor.apply_canvas_op(with_idea(), {"op": "draw", "kind": "text", "rect": [0, 800, 400, 1000],
                                                 "size": [1000, 1000]})
    state = editor.set_element_field(state, "text", "Open till 2am")
    state = editor.set_element_field(state, "desc", "Small hand-lettered sign")
    mine = state.elements[0]
    state.width, state.height = 1360, 768
    chat_server.script(completion(json.dumps(answer())))
    out = compose(expander).on_expand(state, IDEA, "")
    assert mine in out["state"].elements and len(out["state"].elements) == 3
    assert "kept&#95;added" in out["expand_note"]
    content = chat_server.requests[0]["body"]["messages"][1]["content"]
    assert "Open till 2am" in content and "1360x768 pixels" in content
    assert editor.undo(out["state"]).caption == state.caption


def test_plain_text_mode_expands_the_typed_text_and_undo_brings_it_back(chat_server, expander):
    state = editor.ingest_json(editor.load_caption(EditorState(), load_template("logo")), "a fox in the snow").state
    assert state.plain_text == "a fox in the snow"
    chat_server.script(completion(json.dumps(answer())))
    tab = compose(expander)
    out = tab.on_expand(state, "ignored in plain-text mode", "a red fox in deep snow")  # typed since the state
    assert out["state"].plain_text is None and len(out["state"].elements) == 2
    content = chat_server.requests[0]["body"]["messages"][1]["content"]
    assert "Idea: a red fox in deep snow" in content and "user placed" not in content  # no layout is kept
    undone = tab.on_undo(out["state"])
    assert undone["state"].plain_text == "a fox in the snow" and undone["json"] == "a fox in the snow"


def test_failures_are_messages_and_visitors_see_no_server_url(chat_server, expander):
    for policy, operator in ((Policy(), True), (VISITOR, False)):
        chat_server.script(Reply(200, b"<html>a login page</html>"))
        with pytest.raises(gr.Error) as err:
            compose(expander, policy).on_expand(with_idea(), IDEA, "")
        assert "did not answer with JSON" in err.value.message and "a login page" in err.value.message
        assert ("127.0.0.1" in err.value.message) is operator
        chat_server.script(error_reply(404, "model 'test-model' not found"))
        with pytest.raises(gr.Error, match="HTTP 404 .*model 'test-model' not found"):
            compose(expander, policy).on_expand(with_idea(), IDEA, "")
    chat_server.script(completion(None, refusal="I can't help with that."))
    with pytest.raises(gr.Error, match="the model refused: I can't help with that"):
        compose(expander).on_expand(with_idea(), IDEA, "")
    chat_server.script(completion("Sure! Here is a nice poster idea."), completion("Still prose."))
    with pytest.raises(gr.Error, match="prose"):
        compose(expander).on_expand(with_idea(), IDEA, "")


def test_unusable_requests_are_refused_before_any_call(chat_server, expander):
    with pytest.raises(gr.Error, match="Write a short idea"):
        compose(expander).on_expand(EditorState(), "  ", "")
    drawn = editor.apply_canvas_op(with_idea(), {"op": "draw", "kind": "text", "rect": [0, 0, 500, 500],
                                                 "size": [1000, 1000]})  # an empty text element
    with pytest.raises(gr.Error, match="the layout to keep has errors in its elements"):
        compose(expander).on_expand(drawn, IDEA, "")
    with pytest.raises(gr.Error) as err:
        compose(Expander(ExpandSettings())).on_expand(with_idea(), IDEA, "")
    assert NOT_SET_UP in err.value.message
    assert chat_server.requests == []


def model_tab(expander, policy=Policy()):
    return ModelTab(ModelSlot(), policy=policy, expander=expander)


def test_settings_are_operator_only_and_the_key_is_never_sent_back(chat_server, expander, tmp_path):
    page = model_tab(expander).on_page_load("fp8 (official, ~27 GB)", "x", "full", 1024, 1024, None)
    assert page["expand_url"]["value"] == chat_server.url and page["expand_key"]["value"] == ""
    assert page["expand_kind"]["interactive"] is True
    assert escape(f"at {chat_server.url}, model test-model, an API key is set") in page["expand_status"]
    shown = json.dumps(page, default=str)
    assert "sk-secret" not in shown and escape("sk-secret") not in shown
    visitor = model_tab(expander, VISITOR).on_page_load("fp8 (official, ~27 GB)", "x", "full", 1024, 1024, None)
    assert visitor["expand_url"]["value"] == "" and visitor["expand_kind"]["interactive"] is False
    assert visitor["expand_status"] == escape("Prompt expansion: OpenAI-compatible server, model test-model.")
    with pytest.raises(gr.Error, match="Only an operator may change the prompt-expansion backend"):
        model_tab(expander, VISITOR).on_expand_settings("openai", "http://169.254.169.254/v1", "m", "", None)
    with pytest.raises(gr.Error, match="Only an operator"):
        model_tab(expander, VISITOR).on_expand_forget_key(None)
    assert expander.settings.url == chat_server.url  # unchanged by the refusals

    tab = model_tab(expander)
    out = tab.on_expand_settings("openai", chat_server.url, "other-model", "", None)  # empty key: kept
    assert out["expand_key"] == "" and expander.settings.model == "other-model" and expander.settings.key
    with pytest.raises(gr.Error, match="URL: the server's API root must start with http"):
        tab.on_expand_settings("openai", "ftp://x", "m", "", None)
    assert expander.settings.model == "other-model"
    tab.on_expand_settings("openai", chat_server.url, "other-model", "sk-new", None)
    chat_server.script(completion(json.dumps(answer())), completion(json.dumps(answer())))
    compose(expander).on_expand(with_idea(), IDEA, "")
    assert chat_server.requests[-1]["headers"]["Authorization"] == "Bearer sk-new"
    assert chat_server.requests[-1]["body"]["model"] == "other-model"
    tab.on_expand_forget_key(None)
    compose(expander).on_expand(with_idea(), IDEA, "")
    assert "Authorization" not in chat_server.requests[-1]["headers"]


def test_a_local_folder_goes_through_the_model_source_allow_list(expander, tmp_path):
    allowed, outside = tmp_path / "models", tmp_path / "elsewhere"
    (allowed / "lm").mkdir(parents=True)
    (allowed / "lm" / "config.json").write_text("{}")
    (outside / "lm").mkdir(parents=True)
    (outside / "lm" / "config.json").write_text("{}")
    tab = model_tab(expander, Policy(models_dirs=(allowed,)))
    with pytest.raises(gr.Error, match="is not an allowed model source"):
        tab.on_expand_settings("local", "", str(outside / "lm"), "", None)
    with pytest.raises(gr.Error, match="is not an allowed model source"):
        tab.on_expand_settings("local", "", "../elsewhere/lm", "", None)
    assert expander.settings.kind == "openai"
    out = tab.on_expand_settings("local", "", "lm", "", None)
    assert expander.settings.kind == "local" and expander.settings.model == str(allowed / "lm")
    assert escape(f"local causal LM folder {allowed / 'lm'}") in out["expand_status"]
    visitor = model_tab(expander, VISITOR).on_page_load("fp8 (official, ~27 GB)", "x", "full", 1024, 1024, None)
    assert escape("local causal LM folder lm,") in visitor["expand_status"]  # the name, not the path
    assert escape(str(allowed)) not in visitor["expand_status"] and visitor["expand_model"]["value"] == ""


def test_an_operator_switches_to_a_local_model_folder_and_expand_uses_it(tmp_path):
    """The tiny random-weight LM of tests/expand: whatever it picks, the grammar makes a clean caption."""
    from tests.expand.tiny_lm import write_tiny_lm

    expander = Expander(ExpandSettings())
    model_tab(expander).on_expand_settings("local", "", str(write_tiny_lm(tmp_path)), "", None)
    state = editor.apply_canvas_op(with_idea("a fox"), {"op": "draw", "kind": "obj", "rect": [0, 0, 300, 300],
                                                        "size": [1000, 1000]})
    state = editor.set_element_field(state, "desc", "A sleeping fox")
    out = compose(expander).on_expand(state, "a fox", "")
    assert verify(out["state"].caption) == [] and state.elements[0] in out["state"].elements
    assert editor.undo(out["state"]).caption == state.caption


def test_visitors_share_a_per_minute_budget_and_operators_are_not_metered(chat_server):
    """Every expansion may spend the operator's key: visitors (and API clients) together get
    `per_minute` a minute, refused before the server is asked; the operator is never refused."""
    now = [1000.0]
    expander = Expander(ExpandSettings(url=chat_server.url, model="test-model"), per_minute=2, clock=lambda: now[0])
    chat_server.script(*(completion(json.dumps(answer())) for _ in range(4)))
    visitor, operator = compose(expander, VISITOR), compose(expander)
    visitor.on_expand(with_idea(), IDEA, "")
    now[0] += 30
    visitor.on_expand(with_idea(), IDEA, "")
    with pytest.raises(gr.Error, match="at most 2 expansions a minute for visitors; try again in 30 s"):
        visitor.on_expand(with_idea(), IDEA, "")
    assert len(chat_server.requests) == 2
    operator.on_expand(with_idea(), IDEA, "")  # not metered
    now[0] += 31  # the first call is more than a minute old
    visitor.on_expand(with_idea(), IDEA, "")
    assert len(chat_server.requests) == 4
