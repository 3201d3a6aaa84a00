"""History and region edit in Debian's chromium at 1440x900 against a really launched app on the tiny model:
a result is still in the history after the server restarts on the same output folder; Reuse seed fills the
seed; a click on the overlay picks a box; a region edit of one box changes the pixels inside it and none
outside it (measured on the PNGs); the compare slider shows the pair; Vary makes the same prompt with a new
seed; delete asks, then removes exactly that file; no error toast on the way. Screenshots go to
test-artifacts/."""
import json

import numpy as np
import pytest
from PIL import Image

from ideogram_app.pipeline.metadata import read_image_metadata
from ideogram_app.pipeline.region import FEATHER_TOKENS
from ideogram_app.ui.results import RESULT_NAME
from tests.ui.conftest import free_port, screenshot, start_tiny_server, stop_app
from tests.ui.test_browser import enter, paste_template

pytestmark = pytest.mark.browser
SIDE = 256  # 16x16 tokens: room for a box, its ramp and an untouched outside


def results_on_disk(outputs) -> list:
    return sorted((p for p in outputs.rglob("*.png") if RESULT_NAME.fullmatch(p.name)),
                  key=lambda p: p.stat().st_mtime_ns)


# Every error toast the page shows, kept in window.__toasts (they fade out before a screenshot sees them).
TOAST_WATCH = """
window.__toasts = [];
new MutationObserver(() => document.querySelectorAll('.toast-body.error:not([data-seen])').forEach(t => {
    t.setAttribute('data-seen', '1'); window.__toasts.push(t.innerText); })
).observe(document, {childList: true, subtree: true});
"""


def open_page(browser, url):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.add_init_script(TOAST_WATCH)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')")
    return context, page


def test_history_survives_a_restart_and_region_edit_changes_only_the_box(browser, tiny_repo, tmp_path):
    outputs, port = tmp_path / "outputs", free_port()
    outputs.mkdir()
    server = start_tiny_server(tiny_repo, outputs, port=port)
    context, page = open_page(browser, server.url)
    try:
        caption = paste_template(page, "logo")
        page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length === 3")
        for field in ("#width input", "#height input"):
            enter(page, field, str(SIDE))
        page.locator("#generate-btn").click()
        page.wait_for_function("() => document.querySelector('#gen-status').innerText.includes('Done: 1 image')",
                               timeout=120_000)
        (first,) = results_on_disk(outputs)

        stop_app(server.proc)
        server = start_tiny_server(tiny_repo, outputs, port=port)  # same origin: the browser keeps its id
        page.reload()
        page.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')",
                               timeout=120_000)  # 2 shared cores: a cold process answers its first events slowly
        page.locator("#gallery img").first.wait_for(state="visible")
        assert first.name in page.locator("#gallery img").first.get_attribute("src")
        screenshot(page, "history-1-after-restart")

        page.locator("#gallery img").first.click()  # select it: the region panel lists its boxes
        page.wait_for_function("() => document.querySelector('#region-note').innerText.includes('3 box(es)')")
        page.locator("#history-reuse").click()
        seed = read_image_metadata(first)["settings"]["seed"]
        page.wait_for_function(f"() => document.querySelector('#seed input').value === '{seed}'")

        overlay = page.locator("#overlay img")  # a click on a box of the overlay picks it ...
        overlay.wait_for(state="visible")
        overlay.scroll_into_view_if_needed()  # the results column scrolls on its own
        bounds = overlay.bounding_box()
        scale = min(bounds["width"], bounds["height"]) / SIDE  # shown scaled down and centred (object-fit)
        x, y = 0.5 * SIDE, 0.76 * SIDE  # inside box 3, [740, 370, 780, 630]
        overlay.click(position={"x": (bounds["width"] - SIDE * scale) / 2 + x * scale,
                                "y": (bounds["height"] - SIDE * scale) / 2 + y * scale})
        page.wait_for_function("() => document.querySelector('#region-element input').value.includes('OUTDOOR GEAR')")
        page.locator("#region-element input").click()  # ... and so does the list
        page.get_by_role("option", name="2 · text · NORTHWIND").click()
        page.wait_for_function("() => document.querySelector('#region-text input, #region-text textarea').value "
                               "=== 'NORTHWIND'")
        page.locator("#region-text input, #region-text textarea").fill("SOUTHWIND")
        page.locator("#region-desc textarea").fill("Thin red handwritten script")
        page.locator("#region-run").click()
        page.wait_for_function("() => document.querySelector('#region-status').innerText.includes('Regenerated box 2')",
                               timeout=120_000)
        first_again, edited = results_on_disk(outputs)
        assert first_again == first
        record = read_image_metadata(edited)
        element = json.loads(record["prompt"])["compositional_deconstruction"]["elements"][1]
        assert (element["text"], element["desc"]) == ("SOUTHWIND", "Thin red handwritten script")
        box = caption["compositional_deconstruction"]["elements"][1]["bbox"]
        assert record["settings"]["edit_region"] == box and record["settings"]["denoising_strength"] == 0.8

        # Pixels: the box is y 156..184, x 64..192; outside it and its ramp plus a token, nothing may change.
        before = np.asarray(Image.open(first).convert("RGB"), dtype=np.int16)
        after = np.asarray(Image.open(edited).convert("RGB"), dtype=np.int16)
        diff = np.abs(after - before).max(axis=2)
        y0, x0, y1, x1 = (round(v * SIDE / 1000) for v in box)
        margin = 16 * (FEATHER_TOKENS + 1)
        outside = np.ones_like(diff, dtype=bool)
        outside[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = False
        inside = diff[y0:y1, x0:x1]
        print(f"region edit in the browser: outside max |diff| {diff[outside].max()}, inside mean {inside.mean():.1f}")
        assert diff[outside].max() <= 1 and inside.mean() > 10

        page.locator("#compare-slider img").first.wait_for(state="visible")
        sources = [img.get_attribute("src") for img in page.locator("#compare-slider img").all()]
        assert any(first.name in s for s in sources) and any(edited.name in s for s in sources)
        screenshot(page, "history-2-region-edit-and-compare")

        page.locator("#history-vary").click()  # of the selected result, the edited one: its prompt, a new seed
        page.wait_for_function("() => document.querySelector('#history-status').innerText.includes('Variation')",
                               timeout=120_000)
        *_, varied = results_on_disk(outputs)
        assert read_image_metadata(varied)["prompt"] == record["prompt"]
        assert read_image_metadata(varied)["settings"]["seed"] != record["settings"]["seed"]

        page.locator("#history-delete").click()  # the variation is the selected one now
        page.locator("#history-confirm").wait_for(state="visible")
        assert varied.name in page.locator("#history-status").inner_text()
        page.locator("#history-cancel").click()
        page.locator("#history-confirm").wait_for(state="hidden")
        assert results_on_disk(outputs) == [first, edited, varied]
        page.locator("#history-delete").click()
        page.locator("#history-confirm").click()
        page.wait_for_function("() => document.querySelector('#history-status').innerText.includes('Deleted')")
        assert results_on_disk(outputs) == [first, edited]
        screenshot(page, "history-3-deleted")
        assert page.evaluate("() => window.__toasts") == []
    except Exception:
        screenshot(page, "FAILED-history")
        print(server.log.read_text()[-4000:])
        raise
    finally:
        context.close()
        stop_app(server.proc)
