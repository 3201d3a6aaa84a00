"""Nothing is lost when the server dies: a process killed (-9) while writing PNGs leaves no PNG that
fails to open; a server killed during a generation keeps every earlier result, and after a restart on
the same output folder the page (which Gradio reloads once it reaches the new process) and any later
reload show the caption again (kept in the browser) and the results (listed from disk). An event from
a page that was not reloaded is refused with a message (tests/ui/test_hostile.py)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from PIL import Image

from ideogram_app.ui.results import RESULT_NAME, list_results
from tests.ui.conftest import REPO_ROOT, free_port, screenshot, start_tiny_server, stop_app
from tests.ui.test_browser import caption_in_editor, enter, paste_template

WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from PIL import Image
    from ideogram_app.pipeline.metadata import attach_metadata, make_record
    from ideogram_app.ui.results import save_results

    side = 1536  # incompressible noise: each PNG takes a noticeable time to write
    noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    print("ready", flush=True)
    while True:
        save_results([attach_metadata(noise.copy(), make_record("a red apple", "text", {"seed": 1}))], Path(sys.argv[1]))
""")


def assert_every_png_opens(folder) -> list:
    pngs = sorted(p for p in folder.rglob("*.png"))
    for path in pngs:
        with Image.open(path) as image:
            image.load()  # a truncated file fails here
    return pngs


def test_kill_9_while_writing_pngs_leaves_none_broken(tmp_path):
    for attempt in range(3):  # the kill must land mid-write at least once; it nearly always does at once
        folder = tmp_path / f"run{attempt}"
        folder.mkdir()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert writer.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while not any(RESULT_NAME.fullmatch(p.name) for p in folder.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.15)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        pngs = assert_every_png_opens(folder)
        assert pngs and all(RESULT_NAME.fullmatch(p.name) for p in pngs)
        assert len(list_results(folder)) == len(pngs)
        if [p for p in folder.iterdir() if p.name.endswith(".tmp")]:  # killed mid-write: only a hidden temp is left
            return
    pytest.fail("the writer was never killed in the middle of a write")


@pytest.mark.browser
def test_kill_9_during_generation_then_restart_and_reload(browser, tiny_repo, tmp_path):
    outputs, port = tmp_path / "outputs", free_port()
    outputs.mkdir()
    server = start_tiny_server(tiny_repo, outputs, port=port)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(server.url)
        page.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')")
        caption = paste_template(page, "logo")
        page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 3")
        for field in ("#width input", "#height input"):
            enter(page, field, "64")
        page.locator("#generate-btn").click()
        page.wait_for_function("() => document.querySelector('#gen-status').innerText.includes('Done: 1 image')",
                               timeout=120_000)
        (first,) = [p for p in outputs.rglob("*.png") if RESULT_NAME.fullmatch(p.name)]

        for field in ("#width input", "#height input"):
            enter(page, field, "512")  # long enough to be killed in the middle
        page.locator("#preset input").click()
        page.get_by_role("option", name="Quality · 48 steps").click()
        page.locator("#generate-btn").click()
        page.wait_for_function("() => /denoising step [1-9]/.test(document.querySelector('#gallery').innerText)",
                               timeout=60_000)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        assert [p for p in assert_every_png_opens(outputs) if RESULT_NAME.fullmatch(p.name)] == [first]

        server = start_tiny_server(tiny_repo, outputs, port=port)  # same origin: the page's storage is readable
        # Gradio's page reloads itself once it reaches the new process; then an explicit reload, as a user does.
        for reload in (lambda: None, page.reload):
            reload()
            page.wait_for_function("() => (document.querySelector('#json-status') || {}).innerText"
                                   "?.includes('Restored the caption')", timeout=60_000)
            assert caption_in_editor(page) == caption
            assert page.locator("#width input").input_value() == "512"  # the size the browser kept
            page.locator("#gallery img").first.wait_for(state="visible")
            assert first.name in page.locator("#gallery img").first.get_attribute("src")
        screenshot(page, "persistence-restored")
        assert [p for p in outputs.rglob("*.png") if RESULT_NAME.fullmatch(p.name)] == [first]
    finally:
        context.close()
        stop_app(server.proc)
