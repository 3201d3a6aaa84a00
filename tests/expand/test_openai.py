"""The OpenAI-compatible backend against a real HTTP server on loopback: every kind of answer ends in
a valid caption or a precise message, and the verifier retry happens exactly once."""
from __future__ import annotations

import base64
import io
import json
import socket
import time

import pytest
from PIL import Image

from ideogram_app.caption import parse, verify
from ideogram_app.caption.schema import schema_errors
from ideogram_app.expand import (BackendError, CaptionBounds, CaptionRejected, InputError, OpenAIBackend, describe,
                                 expand)
from ideogram_app.expand.schema import generation_schema
from tests.expand.conftest import Reply, completion, error_reply


def backend(server, **options) -> OpenAIBackend:
    settings = {"timeout": 5.0, "retries": 0, "backoff": 0.01} | options
    return OpenAIBackend(server.url, "test-model", "sk-test", **settings)


def assert_clean(result) -> None:
    assert verify(result.json) == []
    assert schema_errors(json.loads(result.json)) == []


def test_good_answer_gives_the_canonical_caption(chat_server, poster_json):
    pretty = json.dumps(json.loads(poster_json), indent=2, ensure_ascii=True)  # escapes and whitespace to repair
    chat_server.script(completion(pretty))
    result = expand("a jazz poster", 1024, 1536, backend=backend(chat_server))
    assert result.json == poster_json and result.attempts == 1
    assert {r.code for r in result.repairs} == {"not_compact", "unicode_escape"}
    assert_clean(result)
    (request,) = chat_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "test-model"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == generation_schema(CaptionBounds())
    assert "1024x1536 pixels (portrait, aspect ratio 2:3)" in body["messages"][1]["content"]


def test_generation_schema_narrows_the_caption_schema(poster_json):
    """The strict schema sent to servers: a caption valid under it (absent palettes written as null,
    as strict mode requires) becomes, after the repairs, a caption valid under schema.json; answers
    that break the caption schema break the strict one too."""
    from jsonschema import Draft202012Validator

    from ideogram_app.expand.repair import finish

    strict = Draft202012Validator(generation_schema(CaptionBounds()))
    answer = json.loads(poster_json)
    for element in answer["compositional_deconstruction"]["elements"]:
        element.setdefault("color_palette", None)
    assert list(strict.iter_errors(answer)) == []
    done = finish(json.dumps(answer, ensure_ascii=False, separators=(",", ":")), [], [])
    assert done.json == poster_json and schema_errors(json.loads(done.json)) == []
    assert {r.code for r in done.repairs} == {"null_removed"}
    style = answer["style_description"]
    for broken in ({**answer, "aspect_ratio": "1:1"}, {**answer, "style_description": {**style, "photo": "35mm"}},
                   {**answer, "style_description": {**style, "color_palette": ["#abcdef"]}}):
        assert list(strict.iter_errors(broken))
        broken = {**broken, "compositional_deconstruction": json.loads(poster_json)["compositional_deconstruction"]}
        assert schema_errors(broken)


def test_malformed_answer_is_sent_back_once_then_reported(chat_server):
    chat_server.script(completion('{"high_level_description": "A cat",'), completion('{"compositional'))
    with pytest.raises(CaptionRejected) as caught:
        expand("a cat", 1024, 1024, backend=backend(chat_server))
    assert len(chat_server.requests) == 2
    assert caught.value.issues[0].code == "json_syntax" and "line 1, column 2: Unterminated string" in str(caught.value)
    assert caught.value.raw == '{"compositional'
    retry = chat_server.requests[1]["body"]["messages"]
    assert retry[-2] == {"role": "assistant", "content": '{"high_level_description": "A cat",'}
    assert "json_syntax" in retry[-1]["content"]
    assert "line 1, column 36: Expecting property name" in retry[-1]["content"]


def test_retry_with_the_verifiers_messages_fixes_an_unknown_key(chat_server, poster_json):
    first = json.loads(poster_json) | {"canvas": "A4"}
    chat_server.script(completion(json.dumps(first)), completion(poster_json))
    result = expand("a jazz poster", 1024, 1024, backend=backend(chat_server))
    assert result.attempts == 2 and result.json == poster_json
    assert [i.code for i in result.retried_for] == ["unknown_key"]
    assert "unknown key 'canvas'" in chat_server.requests[1]["body"]["messages"][-1]["content"]
    assert_clean(result)


def test_prose_answer_is_an_error_not_plain_text(chat_server, poster_json):
    chat_server.script(completion("I would draw a lovely cat on a sofa."),
                       completion(f"Here is the caption:\n```json\n{poster_json}\n```\nEnjoy!"))
    result = expand("a cat", 1024, 1024, backend=backend(chat_server))
    assert "prose, not a JSON caption" in result.retried_for[0].message
    assert result.json == poster_json and "extracted" in {r.code for r in result.repairs}


def test_refusal_is_reported_without_a_retry(chat_server):
    chat_server.script(completion(None, refusal="I can't help with that request."))
    with pytest.raises(BackendError) as caught:
        expand("something forbidden", 1024, 1024, backend=backend(chat_server))
    assert caught.value.kind == "refusal" and "the model refused: I can't help with that request." in str(caught.value)
    assert len(chat_server.requests) == 1
    chat_server.script(completion("", finish_reason="content_filter"))
    with pytest.raises(BackendError, match="content filter") as caught:
        expand("something forbidden", 1024, 1024, backend=backend(chat_server))
    assert caught.value.kind == "refusal"


def test_timeout_is_retried_with_backoff_then_reported(chat_server, poster_json):
    chat_server.script(Reply(200, b"{}", delay=1.0), Reply(200, b"{}", delay=1.0), completion(poster_json))
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        expand("a cat", 1024, 1024, backend=backend(chat_server, timeout=0.3, retries=1, backoff=0.05))
    elapsed = time.monotonic() - started
    assert caught.value.kind == "timeout"
    assert "did not answer within 0.3 s (2 attempt(s))" in str(caught.value) and "--timeout" in str(caught.value)
    assert len(chat_server.requests) == 2 and elapsed < 1.5
    assert expand("a cat", 1024, 1024, backend=backend(chat_server)).json == poster_json  # the server is fine again


def test_server_error_is_retried_and_can_recover(chat_server, poster_json):
    chat_server.script(error_reply(500, "model is loading"), completion(poster_json))
    result = expand("a cat", 1024, 1024, backend=backend(chat_server, retries=2))
    assert result.json == poster_json and len(chat_server.requests) == 2
    chat_server.requests.clear()
    chat_server.script(*[error_reply(503, "overloaded")] * 3)
    with pytest.raises(BackendError) as caught:
        expand("a cat", 1024, 1024, backend=backend(chat_server, retries=2))
    assert caught.value.kind == "http" and "HTTP 503 Service Unavailable: overloaded" in str(caught.value)
    assert len(chat_server.requests) == 3


def test_client_errors_are_not_retried(chat_server):
    chat_server.script(error_reply(401, "Incorrect API key provided"))
    with pytest.raises(BackendError) as caught:
        expand("a cat", 1024, 1024, backend=backend(chat_server, retries=3))
    assert "HTTP 401 Unauthorized: Incorrect API key provided; check the API key" in str(caught.value)
    assert len(chat_server.requests) == 1


def test_json_schema_refused_with_400_falls_back_to_json_mode(chat_server, poster_json):
    chat_server.script(error_reply(400, "response_format type 'json_schema' is not supported by this model"),
                       completion(poster_json), completion(poster_json))
    client = backend(chat_server)
    assert expand("a cat", 1024, 1024, backend=client).json == poster_json
    formats = [request["body"]["response_format"]["type"] for request in chat_server.requests]
    assert formats == ["json_schema", "json_object"]
    expand("a dog", 1024, 1024, backend=client)  # remembered: straight to JSON mode
    assert chat_server.requests[2]["body"]["response_format"] == {"type": "json_object"}
    chat_server.script(error_reply(400, "response_format is not supported"), completion(poster_json))
    assert expand("a cow", 1024, 1024, backend=client).json == poster_json
    assert "response_format" not in chat_server.requests[4]["body"]


def test_a_400_about_something_else_is_an_error(chat_server):
    chat_server.script(error_reply(400, "messages: too many tokens (9000 > 8192)"))
    with pytest.raises(BackendError, match=r"HTTP 400 Bad Request: messages: too many tokens \(9000 > 8192\)"):
        expand("a cat", 1024, 1024, backend=backend(chat_server))


def test_unreachable_server_and_bad_answers_have_precise_messages(chat_server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(BackendError) as caught:
        expand("a cat", 1024, 1024, backend=closed)
    assert caught.value.kind == "unreachable"
    assert f"cannot reach the expansion server at http://127.0.0.1:{port}/v1/chat/completions" in str(caught.value)
    assert "(2 attempt(s))" in str(caught.value)
    chat_server.script(Reply(200, b'{"foo": 1}'), Reply(200, b"<html>hello</html>"),
                       completion('{"high_level', finish_reason="length"))
    for kind, text in (("protocol", "not a chat completion"), ("protocol", "did not answer with JSON"),
                       ("truncated", "cut off at the token limit")):
        with pytest.raises(BackendError, match=text) as caught:
            expand("a cat", 1024, 1024, backend=backend(chat_server))
        assert caught.value.kind == kind
    with pytest.raises(BackendError, match="must start with http"):
        OpenAIBackend("localhost:11434", "m")


def test_repairs_quotes_and_kept_elements(chat_server):
    """Inverted and out-of-range boxes are repaired and reported; quoted texts come back exactly;
    kept elements come back unchanged even when the model edits one and drops another."""
    kept_logo = {"type": "obj", "bbox": [820, 40, 960, 200], "desc": "The shop's round logo, a green leaf."}
    kept_note = {"type": "text", "bbox": [880, 600, 950, 960], "text": "since 1987", "desc": "Small grey italic."}
    keep = {"compositional_deconstruction": {"background": "Plain wall.", "elements": [kept_logo, kept_note]}}
    answer = {"high_level_description": "A shop window poster.",
              "compositional_deconstruction": {"background": "A bright shop window.", "elements": [
                  {"type": "text", "bbox": [300, 900, 100, 80], "text": "GRAND OPENING", "desc": "Huge red letters."},
                  {"type": "obj", "bbox": [-20, 10, 1200, 400], "desc": "A ribbon across the glass."},
                  {"type": "obj", "bbox": [820, 40, 960, 200], "desc": "A logo, redrawn by the model."}]}}
    chat_server.script(completion(json.dumps(answer)))
    idea = 'A poster for a shop: "Grand Opening" on top and “Café ☕ & Co.” below, with a ribbon'
    result = expand(idea, 1360, 768, keep=keep, backend=backend(chat_server))
    assert_clean(result)
    elements = [element.to_dict() for element in result.caption.elements]
    texts = [e["text"] for e in elements if e["type"] == "text"]
    assert "Grand Opening" in texts and "Café ☕ & Co." in texts and "GRAND OPENING" not in texts
    assert kept_logo in elements and kept_note in elements
    for element in elements:
        y0, x0, y1, x1 = element["bbox"]
        assert 0 <= y0 < y1 <= 1000 and 0 <= x0 < x1 <= 1000
    assert elements[0]["bbox"] == [100, 80, 300, 900] and elements[1]["bbox"] == [0, 10, 1000, 400]
    codes = [r.code for r in result.repairs]
    assert codes.count("bbox_swapped") == 1 and codes.count("bbox_clamped") == 1
    assert {"quote_restored", "quote_added", "kept_restored", "kept_added"} <= set(codes)
    user = chat_server.requests[0]["body"]["messages"][1]["content"]
    assert '"Grand Opening"' in user and '"Café ☕ & Co."' in user
    assert json.dumps([kept_logo, kept_note], separators=(",", ":"), ensure_ascii=False) in user


def test_bad_requests_are_refused_before_any_call(chat_server):
    client = backend(chat_server)
    with pytest.raises(InputError, match="empty"):
        expand("   ", 1024, 1024, backend=client)
    with pytest.raises(InputError, match="width must be a positive whole number"):
        expand("a cat", 0, 1024, backend=client)
    with pytest.raises(InputError, match=r"quoted text '\\\\u00e9' cannot be drawn"):
        expand('a sign that says "\\u00e9"', 1024, 1024, backend=client)
    bad_keep = {"compositional_deconstruction": {"background": "x", "elements": [
        {"type": "obj", "bbox": [5, 0, 1, 10], "desc": "d"}]}}
    with pytest.raises(InputError, match=r"bbox_order at compositional_deconstruction.elements\[0\].bbox"):
        expand("a cat", 1024, 1024, keep=bad_keep, backend=client)
    assert chat_server.requests == []


def test_describe_sends_a_bounded_data_url(chat_server, poster_json, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGBA", (3000, 1500), (200, 30, 30, 128)).save(photo)
    chat_server.script(completion(poster_json))
    result = describe(photo, backend=backend(chat_server))
    assert result.json == poster_json
    content = chat_server.requests[0]["body"]["messages"][1]["content"]
    assert "3000x1500 pixels (landscape, aspect ratio 2:1)" in content[0]["text"]
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as sent:
        assert sent.size == (1024, 512) and sent.format == "JPEG"
    with pytest.raises(InputError, match="cannot read"):
        describe(tmp_path / "missing.png", backend=backend(chat_server))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read .*junk.png as an image"):
        describe(tmp_path / "junk.png", backend=backend(chat_server))
    assert parse(result.json).elements
