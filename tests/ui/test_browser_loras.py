"""The LoRA picker of the real app in Debian's chromium: pick a LoRA from the server's folder, set its scale,
generate; the status line and the result's details name it; clear the picker, open the result in the editor
and the picker and scale come back; an operator's upload adds a file and selects it. Screenshots of the
Generate panel go to test-artifacts/."""
import hashlib

import pytest

from tests.lora.loras import fused_truth, write_comfyui
from tests.ui.conftest import ARTIFACTS, screenshot
from tests.ui.test_browser import enter, paste_template

pytestmark = pytest.mark.browser
PICK = "#lora-pick"
SCALE_0 = "#lora-scale-0 input[type=number]"


def panel_screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#lora-panel").screenshot(path=str(ARTIFACTS / f"{name}.png"))


def tokens(page) -> list[str]:
    return [t.strip() for t in page.locator(f"{PICK} .token span").all_inner_texts()]


def test_pick_scale_generate_and_open_in_editor_restores_the_picker(page, app_server, tmp_path):
    folder = app_server.output_dir.parent / "loras"
    folder.mkdir(exist_ok=True)
    lora = write_comfyui(folder / "browser-ink.safetensors", fused_truth(seed=21))
    page.reload()  # the picker lists the folder on page load
    page.wait_for_function("() => (document.querySelector('#token-count') || {}).innerText?.includes('tokens')")
    assert page.locator("#lora-upload").is_visible()  # the local default: this machine's user is the operator

    paste_template(page, "logo")
    page.wait_for_function("() => document.querySelectorAll('#layout-canvas .lc-box').length > 0")
    for field in ("#width input", "#height input"):
        enter(page, field, "64")
    page.locator(f"{PICK} input").click()
    page.get_by_role("option", name="browser-ink.safetensors").click()
    page.keyboard.press("Escape")
    page.locator(SCALE_0).wait_for(state="visible")
    assert "browser-ink.safetensors scale" in page.locator("#lora-scale-0").inner_text()
    enter(page, SCALE_0, "0.6")
    panel_screenshot(page, "browser-lora-1-picker")

    page.locator("#generate-btn").click()
    page.wait_for_function("() => document.querySelector('#gen-status').innerText.includes('Done')", timeout=120_000)
    assert "LoRAs browser-ink.safetensors ×0.6." in page.locator("#gen-status").inner_text()
    details = page.locator("#result-settings").inner_text()
    assert "browser-ink.safetensors" in details and hashlib.sha256(lora.read_bytes()).hexdigest() in details
    assert "0.6" in details
    screenshot(page, "browser-lora-2-generated")

    page.locator(f"{PICK} .remove-all").click()  # clear the picker: its slider goes
    page.locator(SCALE_0).wait_for(state="hidden")
    assert tokens(page) == []
    page.locator("#open-in-editor").click()
    page.wait_for_function("() => document.querySelector('#json-status').innerText.includes('Opened')")
    page.locator(SCALE_0).wait_for(state="visible")
    assert tokens(page) == ["browser-ink.safetensors"]
    assert float(page.locator(SCALE_0).input_value()) == pytest.approx(0.6)
    panel_screenshot(page, "browser-lora-3-restored")

    upload = write_comfyui(tmp_path / "uploaded style.safetensors", fused_truth(seed=22))
    page.locator("#lora-panel input[type=file]").set_input_files(str(upload))
    page.wait_for_function("() => document.querySelector('#lora-note').innerText.includes('Added')")
    assert tokens(page) == ["browser-ink.safetensors", "uploaded_style.safetensors"]
    page.locator("#lora-scale-1 input[type=number]").wait_for(state="visible")
    assert float(page.locator(SCALE_0).input_value()) == pytest.approx(0.6)  # the first keeps its scale
    assert (folder / "uploaded_style.safetensors").read_bytes() == upload.read_bytes()
    assert page.js_errors == []
