"""Fixtures for the app tests: a loaded model slot (on `tiny_repo` from tests/conftest.py), ONE really launched app per
session (`python app.py --model <tiny repo>`, with its process for memory readings), a gradio_client for
it, and one headless Debian chromium shared by the browser tests."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
START_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def loaded_slot(tiny_repo):
    from ideogram_app.ui.model_slot import ModelSlot

    slot = ModelSlot()
    slot.load(str(tiny_repo), "cpu")
    return slot


@pytest.fixture(autouse=True)
def _outputs_in_tmp(tmp_path_factory, monkeypatch):
    """Generated files go to a per-session temp folder, never into the checkout."""
    monkeypatch.setenv("IDEOGRAM_OUTPUT_DIR", str(tmp_path_factory.getbasetemp() / "outputs"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(args: list[str], output_dir: Path, port: int | None = None) -> tuple[subprocess.Popen, str, Path]:
    """Start `python app.py ARGS` on `port` (default: a free one); return the process, its URL and its
    log file (outside the output folder, which holds only what the app writes)."""
    port = port or free_port()
    log = output_dir.parent / f"{output_dir.name}-app-{port}-{time.monotonic_ns()}.log"
    env = {**os.environ, "IDEOGRAM_OUTPUT_DIR": str(output_dir), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), *args],
                            cwd=REPO_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2):
                return proc, url, log
        except urllib.error.HTTPError:  # answering, but behind --auth
            return proc, url, log
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"app.py did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    output_dir: Path

    def rss_mb(self) -> float:
        """The server process's resident memory (VmRSS), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")


def start_tiny_server(tiny_repo: Path, output_dir: Path, *args: str, port: int | None = None) -> Server:
    """`python app.py --model <tiny repo> --memory cpu ARGS`, started and checked to have loaded it."""
    proc, url, log = start_app(["--model", str(tiny_repo), "--memory", "cpu", *args], output_dir, port=port)
    if "Model loaded." not in log.read_text():
        stop_app(proc)
        raise RuntimeError(f"the tiny model did not load:\n{log.read_text()}")
    return Server(proc, url, log, output_dir)


@pytest.fixture(scope="session")
def app_server(tiny_repo, tmp_path_factory):
    """`python app.py --model <tiny repo> --memory cpu --mcp`, really launched, for the whole session."""
    server = start_tiny_server(tiny_repo, tmp_path_factory.mktemp("app-out"), "--mcp")
    yield server
    stop_app(server.proc)


@pytest.fixture(scope="session")
def app_url(app_server):
    return app_server.url


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    yield c
    c.close()


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium through Playwright. Missing chromium skips locally and FAILS in CI."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "Debian chromium not found on PATH (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url, request):
    """The app, loaded and live, in a fresh browser context. A test module sets `VIEWPORT` for another
    window size than 1400 × 1000. `page.js_errors` collects uncaught page errors; a failing test leaves
    a screenshot."""
    context = browser.new_context(viewport=getattr(request.module, "VIEWPORT", {"width": 1400, "height": 1000}))
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(app_url)
    page.locator("#layout-canvas .lc-stage").wait_for()
    # the page-load event has filled the token counter: the app's event loop is up
    page.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')")
    page.js_errors = errors
    yield page
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        screenshot(page, f"FAILED-{request.node.name}")
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the test item, so fixtures can react to failures."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
