"""Prompt expansion in a really launched `python app.py` (no image model needed) whose expansion backend
is a chat-completions server on loopback (tests/expand/conftest.py), set through IDEOGRAM_EXPAND_*:
`/expand` through gradio_client (caption and repairs, the kept elements, bounded inputs, errors as
messages without the server's URL), and the Expand button in Debian's chromium (boxes drawn, one Undo
back). Screenshots go to test-artifacts/."""
import json

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from ideogram_app.caption import verify
from tests.expand.conftest import ChatServer, Reply, completion
from tests.ui.conftest import screenshot, start_app, stop_app
from tests.ui.test_expand_ui import IDEA, answer

JSON_BOX = "#caption-json textarea"


@pytest.fixture(scope="module")
def chat_server():
    server = ChatServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def expand_app(chat_server, tmp_path_factory):
    environment = {"IDEOGRAM_EXPAND_BACKEND": "openai", "IDEOGRAM_EXPAND_URL": chat_server.url,
                   "IDEOGRAM_EXPAND_MODEL": "test-model", "IDEOGRAM_EXPAND_KEY": "sk-from-env"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        proc, url, _ = start_app([], tmp_path_factory.mktemp("expand-out"))
    yield url
    stop_app(proc)


@pytest.fixture(scope="module")
def expand_client(expand_app):
    client = Client(expand_app, verbose=False)
    yield client
    client.close()


def test_expand_endpoint_returns_the_caption_and_its_repairs(chat_server, expand_client):
    assert [p["parameter_name"] for p in expand_client.view_api(print_info=False, return_format="dict")[
        "named_endpoints"]["/expand"]["parameters"]] == ["idea", "width", "height", "keep"]
    chat_server.script(completion(json.dumps(answer(swapped=True))))
    caption, details = expand_client.predict(IDEA, 1360, 768, None, api_name="/expand")
    assert verify(caption) == []
    elements = json.loads(caption)["compositional_deconstruction"]["elements"]
    assert elements[1]["text"] == "LATE BITES" and elements[1]["bbox"] == [60, 100, 220, 900]
    assert {"code": "bbox_swapped", "json_path": "compositional_deconstruction.elements[1].bbox"} in [
        {k: r[k] for k in ("code", "json_path")} for r in details["repairs"]]
    assert details["warnings"] == [] and details["attempts"] == 1
    request = chat_server.requests[-1]
    assert request["headers"]["Authorization"] == "Bearer sk-from-env"
    assert "1360x768 pixels" in request["body"]["messages"][1]["content"]

    kept = {"type": "obj", "bbox": [700, 0, 1000, 300], "desc": "A stray cat watching the crowd."}
    keep = json.dumps({"compositional_deconstruction": {"background": "A street.", "elements": [kept]}})
    chat_server.script(completion(json.dumps(answer())))
    caption, details = expand_client.predict(IDEA, 1024, 1024, keep, api_name="/expand")
    assert kept in json.loads(caption)["compositional_deconstruction"]["elements"]
    assert "kept_added" in [r["code"] for r in details["repairs"]]


@pytest.mark.parametrize("args, message", [
    (("", 1024, 1024, None), "the idea is empty"),
    (("x" * 100_001, 1024, 1024, None), "idea is 100,001 characters long; at most 100,000"),
    ((IDEA, 100_000, 1024, None), "width 100000 is outside"),
    ((IDEA, 1024, 1024, '{"compositional_deconstruction": '), "keep: caption is not valid JSON: line 1"),
    ((IDEA, 1024, 1024, "just prose"), "keep: caption is plain text"),
])
def test_expand_endpoint_refuses_bad_input_with_its_message(expand_client, chat_server, args, message):
    before = len(chat_server.requests)
    with pytest.raises(AppError, match=message):
        expand_client.predict(*args, api_name="/expand")
    assert len(chat_server.requests) == before  # refused before any model call


def test_expand_endpoint_failures_name_no_server_url(expand_client, chat_server):
    chat_server.script(Reply(200, b"<html>proxy login</html>"))
    with pytest.raises(AppError) as err:
        expand_client.predict(IDEA, 1024, 1024, None, api_name="/expand")
    assert "the expansion server did not answer with JSON" in str(err.value)
    assert "127.0.0.1" not in str(err.value)


def boxes(page) -> int:
    return page.locator("#layout-canvas .lc-box").count()


@pytest.mark.browser
def test_expand_in_the_browser_draws_boxes_and_undo_restores(browser, expand_app, chat_server):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(expand_app)
        page.locator("#layout-canvas .lc-stage").wait_for()
        page.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')")
        idea = page.locator("#scene-hld textarea")
        idea.fill(IDEA)
        idea.press("Tab")
        page.wait_for_function(f"() => document.querySelector('{JSON_BOX}').value.includes('LATE BITES')")
        assert boxes(page) == 0
        chat_server.script(completion(json.dumps(answer(swapped=True))))
        page.locator("#expand-btn").click()
        page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 2")
        page.wait_for_function("() => document.querySelector('#expand-note').innerText.includes('Expanded')")
        assert "bbox_swapped" in page.locator("#expand-note").inner_text()
        caption = json.loads(page.locator(JSON_BOX).input_value())
        assert caption["compositional_deconstruction"]["elements"][1]["text"] == "LATE BITES"
        assert page.locator("#scene-hld textarea").input_value().startswith("A flat graphic poster")
        labels = page.locator("#layout-canvas .lc-box").all_inner_texts()
        assert any("LATE BITES" in label for label in labels)
        screenshot(page, "expand-1-expanded")

        page.locator("#undo-btn").click()  # the editor's Undo (the canvas toolbar has one too)
        page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 0")
        restored = json.loads(page.locator(JSON_BOX).input_value())
        assert restored == {"high_level_description": IDEA,
                            "compositional_deconstruction": {"background": "", "elements": []}}
        assert page.locator("#scene-hld textarea").input_value() == IDEA
        screenshot(page, "expand-2-undone")
        assert errors == []
    finally:
        context.close()
