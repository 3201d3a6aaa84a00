"""`python -m ideogram_app.caption expand | describe` through a real subprocess, talking to the
loopback chat server or loading the tiny local model: output, messages and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from ideogram_app.caption import verify
from tests.expand.conftest import ENV_NAMES, completion, error_reply

ROOT = Path(__file__).resolve().parents[2]


def run(*args, env=None, stdin=None):
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES} | (env or {})
    return subprocess.run([sys.executable, "-m", "ideogram_app.caption", *map(str, args)], cwd=ROOT, env=clean,
                          capture_output=True, text=True, input=stdin, timeout=120)


def test_expand_prints_the_caption_and_reports_repairs(chat_server, poster_json, tmp_path):
    chat_server.script(completion(json.dumps(json.loads(poster_json), indent=2, ensure_ascii=False)))
    env = {"IDEOGRAM_EXPAND_URL": chat_server.url, "IDEOGRAM_EXPAND_MODEL": "m", "IDEOGRAM_EXPAND_KEY": "sk-env"}
    result = run("expand", "a jazz poster", "--size", "1360x768", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == poster_json + "\n" and verify(result.stdout.strip()) == []
    assert "repaired not_compact at (top level)" in result.stderr
    request = chat_server.requests[0]
    assert request["headers"]["Authorization"] == "Bearer sk-env" and request["body"]["model"] == "m"
    assert "1360x768 pixels" in request["body"]["messages"][1]["content"]

    keep = tmp_path / "keep.json"
    kept = {"type": "text", "bbox": [10, 10, 100, 990], "text": "KEEP ME", "desc": "Black letters."}
    keep.write_text(json.dumps({"compositional_deconstruction": {"background": "x", "elements": [kept]}}))
    chat_server.script(completion(poster_json))
    result = run("expand", "-", "--keep", keep, "--url", chat_server.url, "--model", "flag-model", "--max-tokens",
                 "900", env=env, stdin='a poster saying "Hello"')
    assert result.returncode == 0, result.stderr
    elements = json.loads(result.stdout)["compositional_deconstruction"]["elements"]
    assert kept in elements and "Hello" in [e.get("text") for e in elements]
    assert "repaired kept_added" in result.stderr and "repaired quote_added" in result.stderr
    assert chat_server.requests[1]["body"]["model"] == "flag-model"
    assert chat_server.requests[1]["body"]["max_tokens"] == 900


def test_describe_sends_the_image(chat_server, poster_json, tmp_path):
    image = tmp_path / "ref.png"
    Image.new("RGB", (640, 480), (10, 120, 200)).save(image)
    chat_server.script(completion(poster_json))
    result = run("describe", image, "--url", chat_server.url, "--model", "vision")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == poster_json
    parts = chat_server.requests[0]["body"]["messages"][1]["content"]
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert run("describe", tmp_path / "none.png", "--url", chat_server.url, "--model", "v").returncode == 2


def test_failures_have_messages_and_exit_codes(chat_server):
    flags = ("--url", chat_server.url, "--model", "m", "--timeout", "5")
    chat_server.script(completion(None, refusal="No."))
    result = run("expand", "a cat", *flags)
    assert result.returncode == 1 and "error: the model refused: No." in result.stderr and result.stdout == ""
    chat_server.script(completion('{"broken'), completion('{"still broken'))
    result = run("expand", "a cat", *flags)
    assert result.returncode == 1 and "still has 1 error(s) after one retry" in result.stderr
    assert 'the model\'s last answer was:\n{"still broken' in result.stderr
    chat_server.script(error_reply(404, "model 'm' not found"))
    result = run("expand", "a cat", *flags)
    assert result.returncode == 2 and "HTTP 404 Not Found: model 'm' not found; check the URL" in result.stderr
    result = run("expand", "a cat")
    assert result.returncode == 2 and "IDEOGRAM_EXPAND_URL" in result.stderr
    result = run("expand", "  ", *flags)
    assert result.returncode == 2 and "the idea is empty" in result.stderr
    assert run("expand", "a cat", "--size", "wide", *flags).returncode == 2


def test_local_backend_from_the_command_line(tiny_lm):
    result = run("expand", 'a bakery sign saying "PAIN"', "--backend", "local", "--model", tiny_lm,
                 "--size", "768x1024", "--max-tokens", "150")
    assert result.returncode == 0, result.stderr
    caption = result.stdout.strip()
    assert verify(caption) == []
    assert "PAIN" in [e.get("text") for e in json.loads(caption)["compositional_deconstruction"]["elements"]]
    result = run("describe", tiny_lm / "config.json", "--backend", "local", "--model", tiny_lm)
    assert result.returncode == 2 and "reads text only" in result.stderr
