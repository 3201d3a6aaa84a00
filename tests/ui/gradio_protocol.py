"""Gradio's HTTP protocol spoken directly, the way a hostile client (or the page itself) speaks it:
raw JSON bodies (which may hold NaN, Infinity, lone surrogates or too few values, none of which
gradio_client would send), and the UI's private events called by their index, as the browser calls them.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    """How a call ended: "complete" (with `data`), "error" (with `message`) or "http" (a refused request:
    `status` and `message`); `seconds` from sending to the end; `logs`: the toasts it sent (gr.Warning/Info)."""

    kind: str
    data: Any = None
    message: str | None = None
    status: int | None = None
    seconds: float = 0.0
    logs: list[dict] = field(default_factory=list)


def _post(url: str, body: str | bytes, timeout: float) -> tuple[int, Any]:
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("detail", detail)
        except (json.JSONDecodeError, AttributeError):
            pass
        return err.code, detail


def _events(response):
    """(event name, parsed data) for each server-sent event of a streaming response."""
    name = None
    for raw in response:
        line = raw.decode("utf-8").rstrip("\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            text = line[5:].strip()
            try:
                yield name, json.loads(text)
            except json.JSONDecodeError:
                yield name, text


def call_api(base: str, api: str, body: str, timeout: float = 60) -> Reply:
    """POST `body` (raw JSON text, e.g. '{"data": ["x", NaN]}') to /gradio_api/call/<api> and read the
    result stream."""
    start = time.monotonic()
    status, answer = _post(f"{base}gradio_api/call/{api}", body, timeout)
    if status != 200:
        return Reply("http", status=status, message=str(answer), seconds=time.monotonic() - start)
    with urllib.request.urlopen(f"{base}gradio_api/call/{api}/{answer['event_id']}", timeout=timeout) as response:
        for name, data in _events(response):
            if name == "complete":
                return Reply("complete", data=data, seconds=time.monotonic() - start)
            if name == "error":
                message = data.get("error") if isinstance(data, dict) else data
                return Reply("error", message=message, seconds=time.monotonic() - start)
    return Reply("lost", seconds=time.monotonic() - start)


class PageSession:
    """One browser session without a browser: the app's events called by index through the queue."""

    def __init__(self, base: str):
        self.base = base
        self.session_hash = uuid.uuid4().hex[:11]
        with urllib.request.urlopen(base + "config", timeout=30) as response:
            config = json.loads(response.read())
        self.dependencies = {d["api_name"]: d for d in config["dependencies"]}

    def event(self, api_name: str, data: list, event_data: Any = None, timeout: float = 60) -> Reply:
        """Run the event whose handler is `api_name` (e.g. "on_json_input") with raw `data`, one value per
        input (ignored for state inputs, which the server keeps)."""
        dependency = self.dependencies[api_name]
        body = json.dumps({"data": data, "event_data": event_data, "fn_index": dependency["id"],
                           "trigger_id": dependency["targets"][0][0], "session_hash": self.session_hash})
        start = time.monotonic()
        status, answer = _post(f"{self.base}gradio_api/queue/join", body, timeout)
        if status != 200:
            return Reply("http", status=status, message=str(answer), seconds=time.monotonic() - start)
        logs = []
        url = f"{self.base}gradio_api/queue/data?session_hash={self.session_hash}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for _, message in _events(response):
                if not isinstance(message, dict) or message.get("event_id") != answer["event_id"]:
                    continue
                if message.get("msg") == "log":
                    logs.append(message)
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    seconds = time.monotonic() - start
                    if message.get("success"):
                        return Reply("complete", data=output.get("data"), seconds=seconds, logs=logs)
                    return Reply("error", message=output.get("error"), seconds=seconds, logs=logs)
        return Reply("lost", seconds=time.monotonic() - start, logs=logs)

    def upload(self, name: str, content: bytes) -> dict:
        """Upload a file like the page does; -> the FileData dict the events take."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{self.base}gradio_api/upload", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            (path,) = json.loads(response.read())
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
