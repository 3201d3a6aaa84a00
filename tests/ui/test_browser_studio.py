"""The studio screen in Debian's chromium at 1440 x 900 against the really launched app (tiny model):
canvas, Generate and the result fit on one screen; a run shows live previews before its image, with
Generate disabled while it runs; Ctrl+Enter generates; an empty start shows no error; plain-text mode
hides the canvas and its tools; without a model Generate explains itself in plain text and the
server logs no traceback. Screenshots of the layout go to docs/images/ (studio-1440.png,
studio-1920.png) and test-artifacts/."""
import pytest

from ideogram_app.caption.templates import template_text
from ideogram_app.ui.views import BLANK_NOTE
from tests.ui.conftest import REPO_ROOT, screenshot, start_app, stop_app

pytestmark = pytest.mark.browser
JSON_BOX = "#caption-json textarea"
DOCS_IMAGES = REPO_ROOT / "docs" / "images"
READY = "() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')"


def open_studio(browser, url, width=1440, height=900):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.js_errors = []
    page.on("pageerror", lambda err: page.js_errors.append(str(err)))
    page.goto(url)
    page.locator("#layout-canvas .lc-stage").wait_for()
    page.wait_for_function(READY)
    return context, page


@pytest.fixture
def studio(browser, app_url, request):
    context, page = open_studio(browser, app_url)
    yield page
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        screenshot(page, f"FAILED-{request.node.name}")
    context.close()


def enter(page, selector: str, text: str) -> None:
    field = page.locator(selector)
    field.fill(text)
    field.press("Tab")


def load_poster(page, size: int) -> None:
    enter(page, JSON_BOX, template_text("poster_headline"))
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 4")
    for field in ("#width input", "#height input"):
        enter(page, field, str(size))
    page.wait_for_function(f"() => document.querySelector('#size-note').innerText.includes('{size} × {size}')")


def inside_viewport(page, selector: str) -> dict:
    box = page.locator(selector).first.bounding_box()
    viewport = page.viewport_size
    assert box is not None, f"{selector} is not rendered"
    assert box["x"] >= 0 and box["y"] >= 0, (selector, box)
    assert box["x"] + box["width"] <= viewport["width"] and box["y"] + box["height"] <= viewport["height"], \
        (selector, box, viewport)
    return box


def generate_button_enabled(page) -> bool:
    return page.evaluate("() => !document.querySelector('#generate-btn').disabled")


def test_canvas_generate_and_the_result_fit_on_one_screen(studio):
    load_poster(studio, 256)
    studio.locator("#generate-btn").click()
    studio.locator("#gallery img").first.wait_for(state="visible", timeout=120_000)
    studio.wait_for_function("() => !document.querySelector('#generate-btn').disabled", timeout=60_000)
    studio.evaluate("() => window.scrollTo(0, 0)")
    studio.wait_for_timeout(300)
    canvas = inside_viewport(studio, "#layout-canvas .lc-stage")
    generate = inside_viewport(studio, "#generate-btn")
    result = inside_viewport(studio, "#gallery img")
    assert canvas["x"] + canvas["width"] <= generate["x"] and result["width"] >= 200  # side by side, large
    studio.locator("#layout-canvas .lc-box").nth(1).click()  # an element in the inspector, for the pictures
    studio.wait_for_function("() => document.querySelector('#element-desc textarea').value.includes('saxophone')")
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    for width, height in ((1440, 900), (1920, 1080)):
        studio.set_viewport_size({"width": width, "height": height})
        studio.evaluate("""() => { document.activeElement?.blur(); window.scrollTo(0, 0);
                                   document.querySelectorAll('#studio-inspector, #studio-run').forEach(c => c.scrollTop = 0); }""")
        studio.wait_for_timeout(500)
        for selector in ("#layout-canvas .lc-stage", "#generate-btn", "#gallery img"):
            inside_viewport(studio, selector)
        studio.screenshot(path=str(DOCS_IMAGES / f"studio-{width}.png"))
    assert studio.js_errors == []


def test_ctrl_enter_runs_with_live_previews_and_generate_disabled(studio):
    load_poster(studio, 512)  # 48 steps at 512 x 512: several previews before the image
    studio.locator("#preset input").click()
    studio.get_by_role("option", name="Quality · 48 steps").click()
    studio.wait_for_function("() => document.querySelector('#preset input').value.startsWith('Quality')")
    assert generate_button_enabled(studio) and "stop" not in studio.locator("#stop-btn").get_attribute("class")
    studio.locator("#layout-canvas .lc-stage").click(position={"x": 3, "y": 3})  # focus anywhere on the page
    studio.keyboard.press("Control+Enter")
    studio.wait_for_function("() => document.querySelector('#generate-btn').disabled")
    studio.wait_for_function("() => document.querySelector('#stop-btn').classList.contains('stop')")  # red now
    studio.locator("#live-preview img").wait_for(state="visible", timeout=120_000)
    assert studio.locator("#gallery img").count() == 0  # the preview came before the image
    assert not generate_button_enabled(studio)
    status = studio.locator("#live-status").inner_text()
    assert "Step " in status or "Decoding" in status, status
    screenshot(studio, "studio-1-live-preview")
    studio.locator("#gallery img").first.wait_for(state="visible", timeout=120_000)
    studio.wait_for_function("() => !document.querySelector('#generate-btn').disabled", timeout=60_000)
    assert "Done: 1 image(s)" in studio.locator("#gen-status").inner_text()
    studio.wait_for_function("() => !document.querySelector('#stop-btn').classList.contains('stop')")
    assert not studio.locator("#live-preview").is_visible() and not studio.locator("#live-status").is_visible()
    screenshot(studio, "studio-2-done")


def test_an_empty_start_shows_no_error(studio):
    page_text = studio.locator("#studio").inner_text()
    assert "error" not in page_text.lower()
    assert studio.locator("#caption-issues").inner_text().strip() == BLANK_NOTE
    assert studio.locator('[data-testid="toast-body"]').count() == 0


def test_plain_text_mode_hides_the_canvas_and_its_tools(studio):
    load_poster(studio, 256)
    assert studio.locator("#layout-canvas .lc-toolbar").is_visible()
    enter(studio, JSON_BOX, "a red fox asleep in fresh snow, morning light")
    studio.locator("#plain-text-note").wait_for(state="visible")
    assert not studio.locator("#layout-canvas .lc-toolbar").is_visible()
    assert not studio.locator("#layout-canvas .lc-box").first.is_visible()  # no stale boxes on screen
    screenshot(studio, "studio-3-plain-text")
    enter(studio, JSON_BOX, template_text("poster_headline"))  # a caption again: the canvas is back
    studio.locator("#layout-canvas .lc-toolbar").wait_for(state="visible")
    studio.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 4")
    assert not studio.locator("#plain-text-note").is_visible()


def test_without_a_model_generate_explains_in_plain_text_and_logs_no_traceback(browser, tmp_path):
    proc, url, log = start_app([], tmp_path / "out")
    try:
        context, page = open_studio(browser, url)
        load_poster(page, 256)
        page.locator("#generate-btn").click()
        toast = page.locator('[data-testid="toast-text"]').first
        toast.wait_for()
        text = toast.inner_text()
        assert text.startswith("No model is loaded yet") and "*" not in text and "`" not in text
        page.wait_for_function("() => document.querySelector('#gen-status').innerText.includes('Model tab')")
        assert "**" not in page.locator("#gen-status").inner_text()  # rendered as Markdown there
        page.wait_for_function("() => !document.querySelector('#generate-btn').disabled")
        context.close()
    finally:
        stop_app(proc)
    assert "Traceback" not in log.read_text()


def test_a_run_waiting_for_the_gpu_shows_its_place_in_the_queue(studio, browser, app_url):
    load_poster(studio, 512)
    studio.locator("#preset input").click()
    studio.get_by_role("option", name="Quality · 48 steps").click()
    studio.wait_for_function("() => document.querySelector('#preset input').value.startsWith('Quality')")
    context, second = open_studio(browser, app_url)
    load_poster(second, 256)
    studio.locator("#generate-btn").click()
    studio.wait_for_function("() => /Step [1-9]/.test((document.querySelector('#live-status') || {}).innerText)",
                             timeout=120_000)
    second.locator("#generate-btn").click()
    second.wait_for_function("() => /queue/i.test(document.querySelector('#gallery').innerText)", timeout=30_000)
    assert not generate_button_enabled(second)  # disabled while it waits, too
    screenshot(second, "studio-4-queued")
    studio.locator("#stop-btn").click()
    second.locator("#gallery img").first.wait_for(state="visible", timeout=120_000)
    context.close()
