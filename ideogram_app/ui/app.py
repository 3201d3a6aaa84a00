"""The app assembled: a header, one gr.Tab per tab module (tabs/), the About page and the public API.

Each tab builds and wires its own components; they share one `Components` registry, so a tab may
read another's controls by name (the Model tab's memory estimate reads the Compose tab's size) and
a wrong name fails here, at build time.
"""
from __future__ import annotations

import json

import gradio as gr

from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.model.prompt_tokenizer import MAX_TEXT_TOKENS

from .api import PublicApi
from .expansion import Expander
from .model_slot import ModelSlot
from .policy import Policy
from .results import output_dir
from .tabs.compose import ComposeTab
from .tabs.model import ModelTab
from .tabs.train import TrainTab
from .wiring import Components

TITLE = "Ideogram 4 Layout Studio"
LICENCE_NOTE = (
    "Licence: the Ideogram 4 weights are released under the **Ideogram 4 Non-Commercial licence**: images are for "
    "non-commercial use unless you hold a commercial licence from Ideogram. This app's code is separate from the weights."
)
ABOUT = f"""
### About
Draw a layout, get an Ideogram 4 image. Boxes are stored as `[y_min, x_min, y_max, x_max]` on a 0–1000 grid
(y relative to the height, x to the width, origin top-left) — the model's own convention. The caption the model
sees is the canonical compact JSON (`/format_caption`); prompts are limited to {MAX_TEXT_TOKENS} tokens.

### Licence
{LICENCE_NOTE} Read the licence on the model page before using results.

### API and MCP
Public endpoints: `/generate`, `/expand`, `/validate_caption`, `/format_caption`, `/render_layout` — see "Use via API" in the
footer, or call them with `gradio_client`. Start the app with `--mcp` to expose the same five functions as MCP tools
at `/gradio_api/mcp/` (not together with a login: see docs/app.md, "Who may do what").
"""


# The studio's look, and Ctrl/Cmd+Enter for Generate. Gradio 6 takes page CSS and JS only as launch()
# arguments, which `python app.py`, a Space and the tests each pass differently, so the page installs
# them itself: one gr.HTML whose script adds the style sheet and the key handler once per page.
STUDIO_CSS = """
.gradio-container { padding-top: 6px !important; }
#licence-note { margin: 0 0 2px; }
#licence-note h1 { font-size: 1.1rem; margin: 0 12px 0 0; display: inline; }
#licence-note p { font-size: 11px; margin: 0; display: inline; color: var(--body-text-color-subdued); }
#studio { gap: 12px; align-items: flex-start; }
#studio-inspector, #studio-run { position: sticky; top: 4px; max-height: calc(100vh - 8px); overflow-y: auto;
  overscroll-behavior: contain; overflow-anchor: none; scrollbar-width: thin; padding-right: 2px;
  flex-wrap: nowrap !important; }  /* a capped column must scroll, not wrap into a second one */
#studio-inspector > *, #studio-run > * { flex-shrink: 0; }
#studio-inspector { gap: 6px; }
#studio-toolbar { gap: 4px; align-items: center; flex-wrap: wrap; }
#studio-toolbar button { font-weight: 500; }
#template-label { flex: 0 0 auto !important; min-width: 0 !important; width: auto !important; font-size: 13px; }
#template-label p { margin: 0; }
#layout-canvas .lc-toolbar button[data-tool="undo"], #layout-canvas .lc-toolbar button[data-tool="redo"] { display: none; }
#plain-text-note { border: 1px dashed var(--border-color-primary); border-radius: 8px; padding: 12px 14px;
  background: var(--background-fill-secondary); }
#run-bar { gap: 8px; }
#generate-btn { font-size: 1.05rem; font-weight: 600; min-height: 44px; }
#stop-btn { min-height: 44px; }
#results-stack { position: relative; }
#live-preview { position: absolute !important; top: 0; left: 0; right: 0; z-index: 20; }
#gen-status, #live-status { min-height: 1.4em; font-size: 13px; }
#gen-status p, #live-status p { margin: 0; }
#size-note { font-size: 12px; color: var(--body-text-color-subdued); margin-top: -6px; }
#size-note p { margin: 0; }
#token-count p { margin: 0; font-size: 13px; }
"""
STUDIO_JS = """
if (!window.__ideogramStudio) {
  window.__ideogramStudio = true;
  const style = document.createElement('style');
  style.textContent = %s;
  document.head.appendChild(style);
  // The gallery focuses its selected thumbnail whenever a new result is selected, which scrolls the
  // page to it; it scrolls its own thumbnail strip itself, so that focus need not move the page.
  const focus = HTMLElement.prototype.focus;
  HTMLElement.prototype.focus = function (options) {
    const thumbnail = this.classList && this.classList.contains('thumbnail-item') && this.closest('#gallery');
    return focus.call(this, thumbnail ? { ...(options || {}), preventScroll: true } : options);
  };
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || !(event.ctrlKey || event.metaKey) || event.repeat) return;
    const button = document.querySelector('#generate-btn');
    if (!button || button.disabled || button.offsetParent === null) return;
    event.preventDefault();
    if (document.activeElement && document.activeElement.blur) document.activeElement.blur();  // as a click would
    button.click();
  });
}
"""


def build_demo(slot: ModelSlot, limits: Limits = DEFAULT_LIMITS, policy: Policy = Policy()) -> gr.Blocks:
    """The whole app for one model slot; every request is checked against `limits`, and `policy`
    decides who may change the model (the default: `python app.py` on this machine)."""
    gr.set_static_paths([str(output_dir())])
    with gr.Blocks(title=TITLE, delete_cache=(3600, 24 * 3600), fill_width=True) as demo:
        ui = Components(demo, limits)
        expander = Expander()  # the prompt-expansion backend, from the environment (ui/expansion.py)
        gr.HTML("", js_on_load=STUDIO_JS % json.dumps(STUDIO_CSS), apply_default_css=False, padding=False,
                elem_id="studio-shell")
        gr.Markdown(f"# {TITLE}\n{LICENCE_NOTE}", elem_id="licence-note")
        with gr.Tab("Compose & generate"):
            ComposeTab(slot, limits, policy, expander).build(ui)
        with gr.Tab("Model"):
            ModelTab(slot, limits, policy, expander).build(ui)
        with gr.Tab("Train"):
            TrainTab(slot, limits, policy).build(ui)
        with gr.Tab("About & licence"):
            gr.Markdown(ABOUT)
        PublicApi(slot, limits, expander).register()
    return demo
