"""Any OpenAI-compatible chat-completions server as an expansion backend (Ollama, vLLM, LM Studio,
llama.cpp server, OpenRouter, OpenAI...). Standard library only: `urllib.request`.

Structured output is asked for in the strongest form the server takes: a JSON schema, else JSON
mode, else nothing (the answer is still parsed and verified). A server that refuses a form says so
with HTTP 400 naming `response_format`/`json_schema`; the backend then steps down and remembers it.
Transient failures (no connection, timeouts, 408/409/429/5xx) are retried with exponential backoff;
everything else becomes a `BackendError` whose message says what happened and what to change.
"""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from ideogram_app.caption.rules import show

from .bounds import CaptionBounds
from .result import BackendError
from .schema import SCHEMA_NAME, generation_schema

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MODES = ("json_schema", "json_object", "none")
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "structured output", "guided_json")
_BODY_CHARS = 300  # how much of an error body a message quotes


class _FormatRefused(Exception):
    """The server answered 400 about the response format; try the next weaker one."""


class OpenAIBackend:
    """`base_url` is the API root (e.g. `http://localhost:11434/v1`); `/chat/completions` is added
    unless it is already there. `timeout` is per connection attempt and per read, in seconds;
    `retries` is how many times a transient failure is tried again (so `retries + 1` attempts),
    waiting `backoff`, 2x`backoff`, 4x`backoff`... in between."""

    vision = True
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                 retries: int = 2, backoff: float = 1.0, temperature: float | None = None,
                 max_tokens: int | None = None, mode: str = "json_schema"):
        parts = urllib.parse.urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BackendError("config", f"the expansion server URL must start with http:// or https://, got "
                               f"{show(base_url)}; pass --url or set IDEOGRAM_EXPAND_URL")
        if not model:
            raise BackendError("config", "no model name for the expansion server; pass --model or set "
                               "IDEOGRAM_EXPAND_MODEL")
        if mode not in MODES:
            raise BackendError("config", f"mode must be one of {', '.join(MODES)}, got {show(mode)}")
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path += "/chat/completions"
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.mode = mode  # steps down to json_object / none when the server refuses a form

    def complete(self, messages: list[dict], bounds: CaptionBounds) -> str:
        while True:
            try:
                payload = self._post(self._body(messages, bounds))
            except _FormatRefused:  # only raised while a response_format is sent, so this ends at "none"
                self.mode = MODES[MODES.index(self.mode) + 1]
                continue
            return self._content(payload)

    def _body(self, messages: list[dict], bounds: CaptionBounds) -> dict:
        body: dict = {"model": self.model, "messages": messages}
        if self.mode == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": SCHEMA_NAME, "strict": True, "schema": generation_schema(bounds)}}
        elif self.mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def _post(self, body: dict) -> dict:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "ideogram-layout-studio"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            failure: BackendError
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as err:
                failure = self._http_error(err, body)
                if err.code not in RETRY_STATUSES:
                    raise failure from None
            except (TimeoutError, socket.timeout) as err:
                failure = self._timeout(attempt, err)
            except urllib.error.URLError as err:
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    failure = self._timeout(attempt, err.reason)
                else:
                    failure = BackendError("unreachable", f"cannot reach the expansion server at {self.url}: "
                                           f"{err.reason} ({attempt} attempt(s)); is it running, and is the URL "
                                           "right (--url / IDEOGRAM_EXPAND_URL)?")
            except (ConnectionError, http.client.HTTPException) as err:
                failure = BackendError("unreachable", f"the connection to {self.url} failed: "
                                       f"{err or type(err).__name__} ({attempt} attempt(s))")
            else:
                try:
                    return json.loads(raw)
                except ValueError:
                    start = raw[:200].decode("utf-8", "replace")
                    raise BackendError("protocol", f"{self.url} did not answer with JSON: {show(start)}; is this an "
                                       "OpenAI-compatible /chat/completions endpoint?") from None
            if attempt < attempts:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        raise failure

    def _timeout(self, attempt: int, err: BaseException) -> BackendError:
        return BackendError("timeout", f"the expansion server at {self.url} did not answer within {self.timeout:g} s "
                            f"({attempt} attempt(s)): {err or 'timed out'}; raise the timeout (--timeout) or use a "
                            "smaller or faster model")

    def _http_error(self, err: urllib.error.HTTPError, body: dict) -> BackendError:
        text = err.read().decode("utf-8", "replace") if err.fp is not None else ""
        detail = _error_detail(text)
        if err.code in (400, 422) and "response_format" in body and any(w in detail.lower() for w in _FORMAT_WORDS):
            raise _FormatRefused from None
        hint = {401: "; check the API key (IDEOGRAM_EXPAND_KEY or --key)",
                403: "; the key may lack access to this model",
                404: f"; check the URL (it should end in /v1 or similar) and the model name {show(self.model)}",
                429: "; the server is rate-limiting: wait and try again"}.get(err.code, "")
        return BackendError("http", f"the expansion server answered HTTP {err.code} {err.reason}: "
                            f"{detail or '(no body)'}{hint}")

    def _content(self, payload: dict) -> str:
        try:
            choice = payload["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise BackendError("protocol", f"the server's answer is not a chat completion (no choices[0].message): "
                               f"{show(payload)}") from None
        if not isinstance(message, dict):
            raise BackendError("protocol", f"choices[0].message is not an object: {show(message)}")
        refusal = message.get("refusal")
        if refusal:
            raise BackendError("refusal", f"the model refused: {refusal}")
        reason = choice.get("finish_reason")
        if reason == "content_filter":
            raise BackendError("refusal", "the server's content filter stopped the answer (finish_reason "
                               "'content_filter'); rephrase the idea")
        content = message.get("content")
        if isinstance(content, list):  # some servers answer in content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if reason == "length":
            raise BackendError("truncated", f"the answer was cut off at the token limit (finish_reason 'length') after "
                               f"{len(content or '')} characters; raise max_tokens or ask for fewer elements")
        if not isinstance(content, str) or not content.strip():
            raise BackendError("protocol", f"the answer has no text content (finish_reason {show(reason)})")
        return content


def _error_detail(text: str) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), else the body itself."""
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:_BODY_CHARS]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:_BODY_CHARS]
    if isinstance(error, str):
        return error[:_BODY_CHARS]
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return data["detail"][:_BODY_CHARS]
    return " ".join(text.split())[:_BODY_CHARS]
