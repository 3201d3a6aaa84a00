"""The Train tab in Debian's chromium against a really launched app (tiny repo, CPU): upload three
images, caption one with a drawn text box and typed text, copy it to the others, start a run and
watch the loss plot, stop it (checkpoint), resume it to the end, restart the app and find the run
listed with its LoRA. Screenshots of each state go to test-artifacts/ (train-*.png)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from ideogram_app.caption import verify
from tests.ui.conftest import screenshot, start_tiny_server, stop_app
from tests.ui.test_browser import drag


@pytest.fixture
def train_server(tiny_repo, tmp_path):
    server = start_tiny_server(tiny_repo, tmp_path / "outputs")
    yield server
    stop_app(server.proc)


def open_train_tab(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("() => (document.querySelector('#train-policy') || {}).innerText?.includes('Upload images')")
    return context, page


def set_number(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input")
    field.fill(str(value))
    field.press("Tab")


def test_caption_train_stop_resume_restart(browser, train_server, tiny_repo, tmp_path):
    files = []
    for i in range(3):
        rng = np.random.default_rng(i)
        path = tmp_path / f"shot{i}.png"
        Image.fromarray((rng.random((4, 5, 3)) * 255).astype("uint8")).resize((80, 64), Image.BILINEAR).save(path)
        files.append(str(path))
    context, page = open_train_tab(browser, train_server.url)
    page.locator("#train-upload input[type=file]").set_input_files(files)
    page.wait_for_function("() => document.querySelectorAll('#train-upload .file-preview tr, #train-upload "
                           ".file-preview-holder tr').length >= 3 || document.querySelector('#train-upload')"
                           ".innerText.includes('shot2')")
    page.locator("#train-create").click()
    page.wait_for_function("() => (document.querySelector('#train-dataset-note') || {}).innerText?.includes('3 images')")
    assert "3 missing" in page.locator("#train-dataset-note").inner_text()
    screenshot(page, "train-dataset-grid")

    page.locator("#train-grid button.thumbnail-item, #train-grid .thumbnail-item").first.click()
    page.wait_for_function("() => (document.querySelector('#train-caption-note') || {}).innerText?.includes('Captioning')")
    page.wait_for_function("() => document.querySelector('#train-canvas .lc-bg')?.naturalWidth > 0")
    page.locator("#train-canvas .lc-type[data-type=text]").click()
    stage = page.locator("#train-canvas .lc-stage").bounding_box()
    left, top, w, h = stage["x"], stage["y"], stage["width"], stage["height"]
    drag(page, left + 0.1 * w, top + 0.1 * h, left + 0.9 * w, top + 0.45 * h)
    page.wait_for_function("() => document.querySelectorAll('#train-canvas .lc-box').length === 1")
    page.locator("#train-el-text textarea").fill("SALE")
    page.locator("#train-el-text textarea").press("Tab")
    page.locator("#train-el-desc textarea").fill("bold white letters")
    page.locator("#train-el-desc textarea").press("Tab")
    page.locator("#train-hld textarea").fill("A poster with one word.")
    page.locator("#train-hld textarea").press("Tab")
    page.locator("#train-background textarea").fill("smooth colour noise")
    page.locator("#train-background textarea").press("Tab")
    page.wait_for_function("() => document.querySelector('#train-json textarea').value.includes('bold white letters')")
    screenshot(page, "train-captioning")
    page.locator("#train-copy-all").click()
    page.wait_for_function("() => (document.querySelector('#train-dataset-note') || {}).innerText?.includes('3 clean')")
    dataset = next((train_server.output_dir.parent / "training" / "local" / "datasets").iterdir())
    for image in sorted(dataset.glob("*.png")):
        text = image.with_suffix(".json").read_text(encoding="utf-8")
        assert verify(text) == [], image.name
        (element,) = json.loads(text)["compositional_deconstruction"]["elements"]
        assert (element["type"], element["text"], element["desc"]) == ("text", "SALE", "bold white letters")

    set_number(page, "tr-rank", 2)
    set_number(page, "tr-alpha", 2)
    set_number(page, "tr-steps", 150)
    set_number(page, "tr-max-pixels", 80 * 64)
    page.locator("#train-run-name input, #train-run-name textarea").fill("browser-run")
    page.locator("#train-start").click()
    page.wait_for_function("() => /step \\d+\\/150/.test(document.querySelector('#train-progress')?.innerText || '')",
                           timeout=90_000)
    page.wait_for_function("() => document.querySelector('#train-plot canvas, #train-plot svg')")
    first = int(re.search(r"step (\d+)/150", page.locator("#train-progress").inner_text()).group(1))
    page.wait_for_function(f"() => +((document.querySelector('#train-progress')?.innerText || '')"
                           f".match(/step (\\d+)\\/150/) || [0, 0])[1] > {first}")
    screenshot(page, "train-running")
    page.locator("#train-stop").click()
    page.wait_for_function("() => (document.querySelector('#train-progress') || {}).innerText?.includes('— stopped')",
                           timeout=60_000)
    assert "last checkpoint" in page.locator("#train-progress").inner_text()
    page.locator("#train-resume").click()
    page.wait_for_function("() => (document.querySelector('#train-progress') || {}).innerText?.includes('— finished')",
                           timeout=90_000)
    page.wait_for_function("() => document.querySelectorAll('#train-validation img').length >= 2", timeout=60_000)
    page.wait_for_function("() => (document.querySelector('#train-runs-table') || {}).innerText?.includes('finished')")
    screenshot(page, "train-finished")
    context.close()

    stop_app(train_server.proc)  # a restart: a new process reads the runs from their folders
    restarted = start_tiny_server(tiny_repo, train_server.output_dir)
    try:
        context, page = open_train_tab(browser, restarted.url)
        page.wait_for_function("() => (document.querySelector('#train-runs-table') || {}).innerText?.includes('browser-run')")
        table = page.locator("#train-runs-table").inner_text()
        assert "finished" in table and "lora.safetensors" in table and "150/150" in table
        screenshot(page, "train-after-restart")
        # Use: the final LoRA at a chosen scale lands in Generate's picker with that scale; downloads
        page.locator("#train-runs input").click()
        page.get_by_role("option", name="browser-run").click()
        page.keyboard.press("Escape")
        page.wait_for_function("() => document.querySelector('#train-use-ckpt input')?.value === 'final'")
        scale = page.locator("#train-use-scale input[type=number]")
        scale.fill("0.7")
        scale.press("Tab")
        page.locator("#train-use").click()
        page.wait_for_function("() => (document.querySelector('#train-use-note') || {}).innerText?.includes('Added')")
        assert "browser-run-step150.safetensors" in page.locator("#train-use-note").inner_text()
        page.locator("#train-download").click()
        page.wait_for_function("() => (document.querySelector('#train-use-note') || {}).innerText?.includes('ComfyUI')")
        screenshot(page, "train-use")
        page.wait_for_function("() => (document.querySelector('#train-download-file') || {}).innerHTML"
                               "?.includes('browser-run-step150.safetensors')")
        page.get_by_role("tab", name="Compose & generate").click()
        page.locator("#lora-scale-0").wait_for(state="visible")
        assert "browser-run-step150.safetensors scale" in page.locator("#lora-scale-0").inner_text()
        assert page.locator("#lora-scale-0 input[type=number]").input_value() == "0.7"
        context.close()
    finally:
        stop_app(restarted.proc)
