"""The real app in Debian's chromium: drawing, moving and resizing boxes updates the JSON editor;
pasting JSON draws boxes; keyboard shortcuts; user text stays text; generating with the tiny model
fills the gallery; open-in-editor restores the caption. Screenshots go to test-artifacts/."""
import json
import math

import pytest

from ideogram_app.caption.templates import template_text
from tests.ui.conftest import screenshot

pytestmark = pytest.mark.browser
JSON_BOX = "#caption-json textarea"


def model_units(value: float, extent: float) -> int:
    """Hand-written expectation: position on the stage as 0-1000, rounded half up."""
    return math.floor(value * 1000 / extent + 0.5)


def caption_in_editor(page) -> dict:
    return json.loads(page.locator(JSON_BOX).input_value())


def wait_for_elements(page, count: int) -> list[dict]:
    page.wait_for_function(
        """([sel, n]) => { try { return JSON.parse(document.querySelector(sel).value)
             .compositional_deconstruction.elements.length === n } catch (e) { return false } }""",
        arg=[JSON_BOX, count])
    return caption_in_editor(page)["compositional_deconstruction"]["elements"]


def drag(page, x0, y0, x1, y1):
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()


def assert_close(actual, expected, tolerance=1):
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected)), (actual, expected)


def enter(page, selector: str, text: str) -> None:
    """Paste `text` into a field and leave it, as a user does (Gradio reports pasted text on blur)."""
    field = page.locator(selector)
    field.fill(text)
    field.press("Tab")


def paste_template(page, name: str) -> dict:
    text = template_text(name)
    enter(page, JSON_BOX, text)
    return json.loads(text)


def test_draw_move_and_resize_update_the_json(page):
    stage = page.locator("#layout-canvas .lc-stage").bounding_box()
    left, top, w, h = stage["x"], stage["y"], stage["width"], stage["height"]
    drag(page, left + 0.2 * w, top + 0.1 * h, left + 0.5 * w, top + 0.4 * h)
    (element,) = wait_for_elements(page, 1)
    expected = [model_units(0.1 * h, h), model_units(0.2 * w, w), model_units(0.4 * h, h), model_units(0.5 * w, w)]
    assert_close(element["bbox"], expected)
    assert page.locator("#layout-canvas .lc-box").count() == 1
    screenshot(page, "browser-1-drawn")

    y0, x0, y1, x1 = element["bbox"]
    box = page.locator("#layout-canvas .lc-box").bounding_box()
    drag(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2,
         box["x"] + box["width"] / 2 + 0.25 * w, box["y"] + box["height"] / 2 + 0.3 * h)
    page.wait_for_function(f"""() => document.querySelector('{JSON_BOX}').value.includes('"bbox": [{y0 + 300}')
                                 || document.querySelector('{JSON_BOX}').value.includes('"bbox": [{y0 + 299}')
                                 || document.querySelector('{JSON_BOX}').value.includes('"bbox": [{y0 + 301}')""")
    moved = caption_in_editor(page)["compositional_deconstruction"]["elements"][0]["bbox"]
    assert_close(moved, [y0 + 300, x0 + 250, y1 + 300, x1 + 250])
    assert moved[2] - moved[0] == y1 - y0 and moved[3] - moved[1] == x1 - x0  # a move keeps the size
    screenshot(page, "browser-2-moved")

    handle = page.locator("#layout-canvas .lc-h-se").bounding_box()
    hx, hy = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    drag(page, hx, hy, hx + 0.1 * w, hy + 0.05 * h)
    page.wait_for_function(f"""() => !document.querySelector('{JSON_BOX}').value.includes('{moved[3]}]')""")
    resized = caption_in_editor(page)["compositional_deconstruction"]["elements"][0]["bbox"]
    assert resized[:2] == moved[:2]
    assert_close(resized[2:], [moved[2] + 50, moved[3] + 100], tolerance=8)  # the handle is grabbed off-centre
    screenshot(page, "browser-3-resized")
    assert page.js_errors == []


def test_pasting_a_template_draws_its_boxes(page):
    caption = paste_template(page, "poster_headline")
    boxed = [e for e in caption["compositional_deconstruction"]["elements"] if e.get("bbox")]
    page.wait_for_function(f"() => document.querySelectorAll('#layout-canvas .lc-box').length === {len(boxed)}")
    labels = page.locator("#layout-canvas .lc-label").all_text_contents()
    assert "SUMMER JAZZ\nNIGHTS" in labels[0]
    first = page.locator("#layout-canvas .lc-box").first
    assert first.evaluate("b => [b.style.top, b.style.left, b.style.height, b.style.width]") == [
        "5%", "8%", "18%", "84%"]  # [50, 80, 230, 920] in tenths of a percent
    enter(page, JSON_BOX, '{"compositional_deconstruction": {"background": "x",, ')
    page.wait_for_function("() => document.querySelector('#json-status').innerText.includes('Invalid JSON at line 1')")
    assert page.locator("#layout-canvas .lc-box").count() == len(boxed)  # canvas untouched
    screenshot(page, "browser-4-template")


def test_keyboard_delete_undo_and_user_text_stays_text(page):
    hostile = '<img src=x onerror="window.__pwned=1">'
    caption = {"compositional_deconstruction": {"background": "white", "elements": [
        {"type": "text", "bbox": [100, 100, 400, 900], "text": hostile, "desc": "a caption line"},
        {"type": "obj", "bbox": [500, 100, 900, 900], "desc": "a lamp"}]}}
    enter(page, JSON_BOX, json.dumps(caption))
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 2")
    assert hostile in page.locator("#layout-canvas .lc-label").first.text_content()
    assert page.locator("#layout-canvas .lc-box img").count() == 0
    assert page.evaluate("() => window.__pwned === undefined")

    page.locator("#layout-canvas .lc-box").nth(1).click()
    page.wait_for_selector("#layout-canvas .lc-box.lc-selected[data-index='1']")
    page.keyboard.press("Delete")
    assert [e["desc"] for e in wait_for_elements(page, 1)] == ["a caption line"]
    page.keyboard.press("Control+z")
    assert [e["desc"] for e in wait_for_elements(page, 2)] == ["a caption line", "a lamp"]

    page.locator("#layout-canvas .lc-box").first.click()
    page.wait_for_selector("#layout-canvas .lc-box.lc-selected[data-index='0']")
    for _ in range(12):  # faster than the server round trip: no step may be lost
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    page.wait_for_function(f"() => document.querySelector('{JSON_BOX}').value.includes('[110, 112, 410, 912]')")
    screenshot(page, "browser-5-keyboard")


def test_generate_shows_an_image_and_open_in_editor_restores_the_caption(page):
    caption = paste_template(page, "logo")
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length > 0")
    for field in ("#width input", "#height input"):
        enter(page, field, "64")
    page.wait_for_function("() => document.querySelector('#layout-canvas .lc-stage').style.aspectRatio !== ''")
    page.locator("#generate-btn").click()
    page.locator("#gallery img").first.wait_for(state="visible", timeout=120_000)
    assert "Done: 1 image(s)" in page.locator("#gen-status").inner_text()
    page.locator("#overlay img").wait_for(state="visible")
    screenshot(page, "browser-6-generated")

    other = paste_template(page, "product_shot")
    count = len(other["compositional_deconstruction"]["elements"])
    page.wait_for_function(f"() => document.querySelectorAll('#layout-canvas .lc-box').length === {count}")
    page.locator("#open-in-editor").click()
    page.wait_for_function("() => document.querySelector('#json-status').innerText.includes('Opened')")
    assert caption_in_editor(page) == caption
    screenshot(page, "browser-7-reopened")


def test_two_browser_sessions_have_separate_canvases(page, browser, app_url):
    other_context = browser.new_context(viewport={"width": 1400, "height": 1000})
    other = other_context.new_page()
    other.goto(app_url)
    other.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')")
    paste_template(page, "poster_headline")
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 4")
    other.reload()
    other.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')")
    assert other.locator("#layout-canvas .lc-box").count() == 0
    assert json.loads(other.locator(JSON_BOX).input_value())["compositional_deconstruction"]["elements"] == []
    other_context.close()


def test_inspector_edits_relabel_the_box(page):
    paste_template(page, "logo")
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 3")
    page.locator("#layout-canvas .lc-box").nth(1).click()
    page.wait_for_function("() => document.querySelector('#element-text textarea').value === 'NORTHWIND'")
    enter(page, "#element-text textarea", "SOUTHWIND\nTRAILS")
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-label')[1].textContent"
                           ".includes('SOUTHWIND')")
    elements = caption_in_editor(page)["compositional_deconstruction"]["elements"]
    assert elements[1]["text"] == "SOUTHWIND\nTRAILS"
    desc = page.locator("#element-desc textarea")
    desc.click()
    desc.press("Control+End")  # the end of the text (End alone stops at the end of a wrapped line)
    desc.press_sequentially(" Bold.")  # typing updates live, without leaving the field
    page.wait_for_function(f"() => document.querySelector('{JSON_BOX}').value.includes('below the emblem. Bold.')")
    screenshot(page, "browser-8-inspector")


def test_touch_draws_a_box(browser, app_url):
    """A finger drag (real touch events through the DevTools protocol) draws a box like a mouse."""
    context = browser.new_context(viewport={"width": 900, "height": 1000}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(app_url)
    page.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')")
    stage = page.locator("#layout-canvas .lc-stage")
    stage.scroll_into_view_if_needed()
    box = stage.bounding_box()
    cdp = context.new_cdp_session(page)
    points = [(box["x"] + box["width"] * f, box["y"] + box["height"] * f) for f in (0.25, 0.4, 0.55, 0.75)]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0][0], "y": points[0][1]}]})
    for x, y in points[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    (element,) = wait_for_elements(page, 1)
    assert_close(element["bbox"], [250, 250, 750, 750])
    screenshot(page, "browser-9-touch")
    context.close()


def test_stop_ends_a_running_generation(page):
    paste_template(page, "logo")
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 3")
    for field in ("#width input", "#height input"):
        enter(page, field, "512")  # ~0.4 s per step with the tiny model: time to press Stop
    page.locator("#preset input").click()
    page.get_by_role("option", name="Quality · 48 steps").click()
    page.wait_for_function("() => document.querySelector('#preset input').value.startsWith('Quality')")
    page.locator("#generate-btn").click()
    page.wait_for_function("() => /denoising step [1-9]/.test(document.querySelector('#gallery').innerText)",
                           timeout=60_000)
    page.locator("#stop-btn").click()
    page.wait_for_function("() => document.querySelector('#gen-status').innerText.includes('Stopped after step')",
                           timeout=60_000)
    step = int(page.locator("#gen-status").inner_text().split("step ")[1].split(";")[0])
    assert 1 <= step < 48
    assert page.locator("#gallery img").count() == 0
    screenshot(page, "browser-10-stopped")


HOSTILE_TYPE = "<img src=x onerror=window.__pwned=1 class=pwn>"
HOSTILE = {  # keys and values that would become elements (or break out of a code span) if shown as markup
    "high_level_description": "`**b**` <img src=x onerror=window.__pwned=2 class=pwn>",
    "compositional_deconstruction": {
        "background": "</div><script>window.__pwned=3</script><b class=pwn>bold</b>",
        "elements": [
            {"type": "text", "bbox": [100, 100, 400, 900], "text": "`<i class=pwn>x</i>` ```",
             "desc": "<svg onload=window.__pwned=4 class=pwn>",
             "<img src=x onerror=window.__pwned=5 class=pwn>`": "</code><img src=x onerror=window.__pwned=6 class=pwn>"},
            {"type": "obj", "bbox": [500, 100, 900, 900], "desc": "<iframe class=pwn srcdoc=x></iframe>",
             "color_palette": ["<img src=x onerror=window.__pwned=7 class=pwn>"]},
        ]}}
INJECTED = """() => ({
    marked: document.querySelectorAll('.pwn').length,
    images: document.querySelectorAll('img[src="x"], svg[onload], iframe[srcdoc]').length,
    scripts: [...document.querySelectorAll('script')].filter(s => s.textContent.includes('__pwned')).length,
    ran: window.__pwned === undefined ? null : window.__pwned,
})"""


def test_hostile_html_in_captions_never_becomes_elements(page):
    """Hostile keys and values land in the JSON status, the issue list, the element and scene panels, the
    canvas labels, the size note and an error toast: everywhere they are shown as the text they are,
    nowhere as elements."""
    broken = json.loads(json.dumps(HOSTILE))
    broken["compositional_deconstruction"]["elements"][1]["type"] = HOSTILE_TYPE  # not a caption at all
    enter(page, JSON_BOX, json.dumps(broken))
    page.wait_for_function("() => document.querySelector('#json-status').innerText.includes('not a caption yet')")
    assert HOSTILE_TYPE in page.locator("#json-status").inner_text()

    enter(page, JSON_BOX, json.dumps(HOSTILE))
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 2")
    page.wait_for_function("() => document.querySelector('#caption-issues').innerText.includes('error')")
    issues = page.locator("#caption-issues").inner_text()
    assert "<img src=x onerror=window.__pwned=5 class=pwn>`" in issues  # the unknown key, as text
    assert "<IMG SRC=X ONERROR=WINDOW.__PWNED=7 CLASS=PWN>" in issues  # the bad colour, quoted (upper-cased)
    labels = page.locator("#layout-canvas .lc-label").all_text_contents()
    assert "`<i class=pwn>x</i>` ```" in labels[0] and "<iframe class=pwn" in labels[1]
    page.locator("#layout-canvas .lc-box").first.click()
    page.wait_for_function("() => document.querySelector('#element-desc textarea').value.includes('<svg')")
    page.locator("#generate-btn").click()  # the caption's errors come back as an error toast
    toast = page.locator('[data-testid="toast-text"]').first
    toast.wait_for()
    assert "the caption has" in toast.inner_text() and "<IMG SRC=X ONERROR=WINDOW.__PWNED=7" in toast.inner_text()
    with page.expect_file_chooser() as chooser:  # a file name is user text too
        page.get_by_role("button", name="Import caption / PNG").click()
    chooser.value.set_files({"name": "<img src=x onerror=window.__pwned=8 class=pwn>.json",
                             "mimeType": "application/json", "buffer": b'{"broken": '})
    page.wait_for_function("() => document.querySelector('#json-status').innerText.includes('Invalid JSON')")
    assert "onerror=window.__pwned=8" in page.locator("#json-status").inner_text()
    screenshot(page, "browser-11-hostile")
    assert page.evaluate(INJECTED) == {"marked": 0, "images": 0, "scripts": 0, "ran": None}
    assert page.js_errors == []
