"""The template side panel in Debian's chromium at 1440×900, against the really launched app: picking
the portrait app mock makes the canvas and the Generate size portrait, and a pick over unsaved work
asks first ("Keep mine" keeps it, "Replace" replaces it). Screenshots go to test-artifacts/."""
import json

import pytest

from ideogram_app.caption.templates import template_text
from tests.ui.conftest import screenshot

pytestmark = pytest.mark.browser
VIEWPORT = {"width": 1440, "height": 900}  # conftest's `page` opens this window size
JSON_BOX = "#caption-json textarea"
MINE = {"compositional_deconstruction": {"background": "My own scene.", "elements": [
    {"type": "obj", "bbox": [100, 100, 500, 500], "desc": "A box I drew myself."}]}}


def open_templates(page) -> None:
    page.locator("#template-sidebar .toggle-button").click()
    page.locator("#template-gallery .thumbnail-item").first.wait_for(state="visible")


def pick(page, title: str) -> None:
    page.locator("#template-gallery .thumbnail-item", has_text=title).click()


def caption(page) -> dict:
    return json.loads(page.locator(JSON_BOX).input_value())


def test_the_app_mock_template_makes_the_canvas_portrait(page):
    open_templates(page)
    pick(page, "App UI mock")
    page.wait_for_function("() => document.querySelector('#height input').value === '1360'")
    assert page.locator("#width input").input_value() == "768"
    page.wait_for_function("""() => { const r = document.querySelector('#layout-canvas .lc-stage').getBoundingClientRect();
                                      return Math.abs(r.height / r.width - 1360 / 768) < 0.02 }""")
    assert caption(page) == json.loads(template_text("app_ui_mock"))
    assert not page.locator("#template-confirm").is_visible()  # an empty canvas is replaced without asking
    # the panel closes, and the studio has its whole width again
    page.wait_for_function("() => !document.querySelector('#template-sidebar').classList.contains('open')")
    generate = page.get_by_role("button", name="Generate (Ctrl+Enter)").bounding_box()
    assert generate["x"] + generate["width"] <= 1440 and generate["y"] + generate["height"] <= 900
    screenshot(page, "templates-app-mock-1440x900")


def test_unsaved_work_is_replaced_only_after_confirming(page):
    box = page.locator(JSON_BOX)
    box.fill(json.dumps(MINE))
    box.press("Tab")
    page.wait_for_function("() => document.querySelector('#caption-json textarea').value.includes('drew myself')")
    open_templates(page)
    pick(page, "Logo")
    page.locator("#template-confirm").wait_for(state="visible")
    assert "Replace your layout" in page.locator("#template-confirm-text").inner_text()
    screenshot(page, "templates-confirm-1440x900")
    assert "drew myself" in page.locator(JSON_BOX).input_value()  # nothing replaced while asking

    page.locator("#template-keep").click()
    page.locator("#template-confirm").wait_for(state="hidden")
    assert "drew myself" in page.locator(JSON_BOX).input_value()

    pick(page, "Logo")
    page.locator("#template-confirm").wait_for(state="visible")
    page.locator("#template-replace").click()
    page.wait_for_function("() => document.querySelector('#caption-json textarea').value.includes('NORTHWIND')")
    assert caption(page) == json.loads(template_text("logo"))
    assert page.locator("#width input").input_value() == page.locator("#height input").input_value() == "1024"
