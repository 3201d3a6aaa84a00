"""Fixtures: a real chat-completions HTTP server on loopback that answers from a script, and the tiny
random-weight causal LM folder."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ideogram_app.caption.templates import template_text

ENV_NAMES = ("IDEOGRAM_EXPAND_BACKEND", "IDEOGRAM_EXPAND_URL", "IDEOGRAM_EXPAND_MODEL", "IDEOGRAM_EXPAND_KEY")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0


def completion(content: str | None, finish_reason: str = "stop", refusal: str | None = None) -> Reply:
    """A chat-completions answer in the format OpenAI-compatible servers send."""
    message = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    payload = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test-model",
               "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}
    return Reply(200, json.dumps(payload).encode())


def error_reply(status: int, message: str) -> Reply:
    return Reply(status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())


class ChatServer:
    """Answers POST /v1/chat/completions with the next scripted `Reply` and records each request
    (path, headers, parsed JSON body)."""

    def __init__(self):
        self.replies: list[Reply] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                reply = server.replies.pop(0) if server.replies else error_reply(500, "no scripted reply left")
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_expand_environment(monkeypatch):
    """The developer's own IDEOGRAM_EXPAND_* settings must not reach the tests."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    from tests.expand.tiny_lm import write_tiny_lm

    return write_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture
def poster_json() -> str:
    return template_text("poster_headline").strip()
