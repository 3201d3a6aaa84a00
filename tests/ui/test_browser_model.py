"""The Model tab in Debian's chromium against the really launched app (the tiny model loaded from a
local folder): the variant says "local folder", a typed path survives clicking the variant dropdown
and away (the reported race), and the label follows what is typed."""
import pytest

pytestmark = pytest.mark.browser
SOURCE = "#model-source textarea"
VARIANT = "#model-variant input"
VIEWPORT = {"width": 1440, "height": 900}  # conftest's `page` opens this window size


@pytest.fixture
def model_page(page):
    """The app's Model tab, open, once it reports the loaded model."""
    page.get_by_role("tab", name="Model").click()
    page.wait_for_function("() => (document.querySelector('#model-status') || {}).innerText?.includes('Loaded')")
    return page


def type_source(page, text: str) -> None:
    """Replace the source box's text key by key, as a user types (Gradio reports typing, not `fill`)."""
    page.locator(SOURCE).fill(text[:-1])
    page.locator(SOURCE).press_sequentially(text[-1])


def test_a_typed_path_survives_the_variant_dropdown(model_page, tiny_repo):
    page = model_page
    page.wait_for_function(f"() => document.querySelector('{VARIANT}').value === 'local folder'")
    assert page.locator(SOURCE).input_value() == str(tiny_repo)  # the loaded folder, not the fp8 Hub id

    type_source(page, "ideogram-ai/ideogram-4-fp8")
    page.wait_for_function(f"() => document.querySelector('{VARIANT}').value.startsWith('fp8 (official')")
    type_source(page, "/models/my-finetune")
    page.wait_for_function(f"() => document.querySelector('{VARIANT}').value === 'local folder'")

    page.locator(VARIANT).click()  # open the list, then click elsewhere: no choice made
    page.locator("#model-status").click()
    page.wait_for_timeout(1500)  # time for a (wrong) answer to arrive
    assert page.locator(SOURCE).input_value() == "/models/my-finetune"
    assert page.locator(VARIANT).input_value() == "local folder"

    page.locator(VARIANT).click()
    page.get_by_role("option", name="bf16 repackage (~54 GB)").click()  # a real choice replaces the text
    page.wait_for_function(f"() => document.querySelector('{SOURCE}').value === "
                           "'DiffSynth-Studio/ideogram-4-bf16-repackage'")
