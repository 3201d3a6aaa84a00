"""The "Compose & generate" tab: layout canvas, element inspector, scene fields, caption JSON, the
Generate panel and the session's results.

`ComposeTab.build` lays out and wires the components; the `on_*` methods are the event handlers.
They translate between widgets and the plain functions that hold the logic (editor.py edits the
caption, views.py derives what is shown, generation.py builds the request, results.py handles the
PNGs) and return only what changed, as `{name: value}` (see wiring.py).

Nothing is lost when the server restarts: the browser keeps a copy of the caption and size (the
`saved` gr.BrowserState, written with every change of the caption; a fixed storage key and
secret, so a new server process can read it) and its own random id (`browser_id`); page load
restores the caption and lists the user's results from disk (results.py). Every handler that reads
the session's `state` is refused with `SESSION_LOST` when it receives the placeholder state (see
state.py) instead of editing or generating from an empty caption. Every input is bounded before
work: text lengths in the wiring, the whole caption after each edit, sizes by the request model,
uploads by uploads.py.

"Expand" (next to the high-level description) asks the server's language model (expansion.py,
set in the Model tab) for a whole caption: the description, or in plain-text mode the plain text,
is the idea, and the current layout's elements are kept as they are. The result replaces the
caption as one undoable step, and what the model's answer needed (repairs, warnings) is noted.

The Generate panel's LoRA picker lists the server's LoRA folder; each run hands its selection to the
GPU slot, where loras.py sets the shared pipeline to exactly it (see docs/app.md, "LoRAs in Generate").
"""
from __future__ import annotations

import copy
import functools
import os
import warnings
from pathlib import Path

import gradio as gr
from PIL import Image

from ideogram_app.caption import (CaptionFormatError, CaptionSyntaxError, PlainText, list_templates,
                                  parse, to_json)
from ideogram_app.expand import ExpandError
from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.metadata import NoImageMetadataError, read_image_metadata
from ideogram_app.pipeline.sampling import GenerationCancelled
from ideogram_app.pipeline.settings import IMG2IMG_STRENGTH, SEED_MAX, SettingsError
from ideogram_app.pipeline.sizes import ASPECT_PRESETS

from .. import editor, views
from ..canvas import LayoutCanvas
from ..editor import MEDIUM_CHOICES, CanvasOpError, prompt_text
from ..expansion import Expander, expansion_note
from ..history import HistoryPanel
from ..generation import (DEFAULTS, PRESET_BY_NAME, PRESET_LABELS, DecodeTimes, GenerationFailed, LiveRuns, RunClock,
                          StopSignals, checked_size, describe_problems, generate_images, settings_from_controls)
from ..loras import (MAX_LORAS, PICKER, SCALE_MAX, SCALE_MIN, add_lora_file, checked_selection, picker_update,
                     restore_selection, upload_file_name)
from ..markup import escape
from ..model_slot import HOW_TO_GET_WEIGHTS, ModelSlot
from ..policy import Policy
from ..region_edit import RegionEditPanel
from ..results import (describe_loras, gallery_items, is_browser_id, list_results, new_browser_id, output_dir,
                       overlay_for, owner_folder, result_details, results_dir, save_results, scratch_file)
from ..state import EditorState, empty_caption
from ..templates_gallery import TemplateGallery
from ..uploads import CheckedImage, limit_pillow, read_text_upload, upload_name
from ..views import ELEMENT_PALETTE_SLOTS, IMAGE_PALETTE_SLOTS
from ..wiring import GLUE, GPU, Components, check_text, emits, inform, warn

CUSTOM_SIZE = "custom"
STYLE_FIELD_LABELS = {"photo": "photo (camera, lens, film, framing)", "art": "art_style (technique, school, look)"}
# The Generate panel's labels, keyed by the GenerationSettings field each control sets, so an error
# about a field names the control (`size` and `sampler` are the settings' names for combined checks).
SETTING_LABELS = {"preset": "Preset", "sampler": "Preset", "num_inference_steps": "Steps", "width": "Width",
                  "height": "Height", "size": "Width × Height", "seed": "Seed", "num_images": "Images",
                  "cfg_scale": "Guidance", "input_image": "Input image", "denoising_strength": "Strength",
                  PICKER: "LoRAs"}
GENERATE_LABEL, RUNNING_LABEL = "Generate  (Ctrl+Enter)", "Generating…"
PLAIN_TEXT_NOTE = ("**Plain-text prompt.** The caption JSON box holds prose, so the model gets it as it is and the "
                   "layout canvas is not used. Paste or type a JSON caption, pick a template, or press Undo to "
                   "bring the layout back.")
# Not Markdown: a toast shows text as it is (HOW_TO_GET_WEIGHTS, with its formatting, goes to the status line).
NO_MODEL = ("No model is loaded yet, so nothing was generated. Open the Model tab, pick a variant or a local "
            "folder and press Load model (or start the app with --model). Composing works without a model.")
LIVE_TICK_S = 0.5  # how often a running page asks for its run's phase and latest preview
LIVE_HEIGHT = RESULTS_HEIGHT = 420

# Output names. Those of the inspector and the scene are the keys of views.inspector_values and
# views.scene_values; "el_palette" and "palette" are the rows of colour pickers.
INSPECTOR = ("el_title", "el_type", "el_text", "el_desc", "el_has_box", "el_palette_count", "el_palette")
SCENE = ("hld", "background", "style_kind", "aesthetics", "lighting", "photo_or_art", "medium", "palette_count",
         "palette")
EDITOR_VIEW = ("state", "saved", "canvas", "issues_all", "issues_element", "issues_scene", "tokens", "json",
               "json_status", *INSPECTOR, *SCENE)
SIZE_VIEW = ("state", "saved", "canvas", "width", "height", "size_note", "aspect")
RESULT_VIEW = ("selected_result", "result_settings", "overlay")
GENERATE_VIEW = ("results", "gallery", "seed", "gen_status", "live_preview", *RESULT_VIEW)
# A run's page furniture: the buttons' state while it runs, the live preview and the timer that fetches it.
RUN_VIEW = ("generate", "stop", "gen_status", "live_status", "live_timer", "live_seen", "live_preview")
# The LoRA picker: the dropdown (PICKER), which LoRAs the scale sliders stand for ("lora_shown", a
# State), and the sliders themselves ("lora_scales": a view over LORA_SCALES; its value is the
# selection [(file name, scale), ...], slider i showing the i-th selected LoRA).
LORA_SCALES = tuple(f"lora_scale_{i}" for i in range(MAX_LORAS))
LORA_VIEW = (PICKER, "lora_shown", "lora_scales")
OPEN_VIEW = (*EDITOR_VIEW, "preset", "seed", "randomize", "width", "height", "aspect", *LORA_VIEW)
PAGE_LOAD_VIEW = (*EDITOR_VIEW, "width", "height", "aspect", "size_note", "browser_id", "results", "gallery", PICKER,
                  "lora_upload", *RESULT_VIEW)
# Browser storage (localStorage). The keys and the secret are fixed so that a restarted server (a new
# process) reads what the page stored; the secret is sent to every page anyway, it only keeps other
# scripts on the same origin from reading the caption by accident.
SAVED_KEY, BROWSER_ID_KEY, STORAGE_SECRET = "ideogram-studio-caption", "ideogram-studio-browser", "ideogram-studio"
SESSION_LOST = ("This page's session is not on the server any more (the server restarted, or the session "
                "expired), so nothing was changed or generated. Reload the page: your caption is kept in this "
                "browser and comes back, and your results are listed again.")
# The colour pickers, one input each (a palette is read from its count and all of its pickers).
EL_PICKERS = tuple(f"el_color_{i + 1}" for i in range(ELEMENT_PALETTE_SLOTS))
SCENE_PICKERS = tuple(f"color_{i + 1}" for i in range(IMAGE_PALETTE_SLOTS))


def _needs_session(handler):
    """`handler` (whose first input is the session's state), refused with SESSION_LOST for the
    placeholder state (see state.py)."""
    @functools.wraps(handler)  # keeps @emits and the signature Gradio reads
    def checked(state, *args, **kwargs):
        if isinstance(state, EditorState) and state.placeholder:
            raise gr.Error(SESSION_LOST, duration=None)
        return handler(state, *args, **kwargs)
    return checked


def _session(request: gr.Request | None) -> str:
    """The browser session a request comes from ("local" when a handler is called directly)."""
    return request.session_hash if request is not None else "local"


def _named(handler, name: str):
    """Give a handler made by a factory its own name (Gradio shows it; errors cite it)."""
    handler.__name__ = name
    handler.__qualname__ = f"ComposeTab.{name}"
    return handler


class ComposeTab:
    """Handlers bound to the process's model slot, the request limits and this tab's Stop signals."""

    def __init__(self, slot: ModelSlot, limits: Limits = DEFAULT_LIMITS, policy: Policy = Policy(),
                 expander: Expander | None = None):
        self.slot = slot
        self.limits = limits
        self.policy = policy  # who may add files to the shared LoRA folder; who sees the expansion server's URL
        self.expander = expander if expander is not None else Expander()
        self.stops = StopSignals()
        self.live = LiveRuns()  # each session's running generation: phase label and latest preview
        self.decode_times = DecodeTimes()

    # ---- layout and wiring -------------------------------------------------------------------

    def build(self, ui: Components) -> None:
        """Create the tab's components inside the current gr.Tab and wire their events. Also sets
        Pillow's bound on decoded pixels from the limits (uploads.py).

        One screen (docs/app.md, "Compose"): the inspector on the left, the canvas in the middle and
        the Generate panel with the latest result on the right, so that drawing, generating and
        looking at the result need no scrolling at 1440 x 900; everything secondary sits in closed
        accordions."""
        limit_pillow(self.limits)
        ui.add("state", gr.State(EditorState(placeholder=True)))
        ui.add("saved", gr.BrowserState(None, storage_key=SAVED_KEY, secret=STORAGE_SECRET))
        ui.add("browser_id", gr.BrowserState(None, storage_key=BROWSER_ID_KEY, secret=STORAGE_SECRET))
        ui.add("results", gr.State([]))
        ui.add("selected_result", gr.State(None))
        with gr.Row(equal_height=False, elem_id="studio"):
            with gr.Column(scale=3, min_width=280, elem_id="studio-inspector"):
                self._layout_inspector(ui)
            with gr.Column(scale=6, min_width=420, elem_id="studio-canvas"):
                self._layout_canvas(ui)
            with gr.Column(scale=4, min_width=340, elem_id="studio-run"):
                self._layout_generate(ui)
        self._wire_editor(ui)
        self._wire_generate(ui)
        HistoryPanel(self.slot, self.limits, self.stops, self._result_view).build(ui)  # ui/history.py
        RegionEditPanel(self.slot, self.limits, self.stops, self._result_view).build(ui)  # ui/region_edit.py
        self.templates = TemplateGallery(self)
        self.templates.build(ui)  # the template side panel and the toolbar's list (ui/templates_gallery.py)

    def _layout_canvas(self, ui: Components) -> None:
        """The canvas and the one toolbar of caption actions above it (templates, add, undo/redo).
        In plain-text mode the canvas is hidden and a note says why (see `editor_view`)."""
        with gr.Row(elem_id="studio-toolbar", equal_height=True):
            gr.Markdown("Template", elem_id="template-label", container=False)
            ui.add("template", gr.Dropdown(list_templates(), label="Template", value=None, show_label=False,
                                           container=False, scale=3, min_width=140, elem_id="template-pick"))
            ui.add("add_obj", gr.Button("+ obj", size="sm", scale=0, min_width=60))
            ui.add("add_text", gr.Button("+ text", size="sm", scale=0, min_width=60))
            ui.add("undo", gr.Button("↶ Undo", size="sm", scale=0, min_width=70, elem_id="undo-btn"))
            ui.add("redo", gr.Button("↷ Redo", size="sm", scale=0, min_width=70, elem_id="redo-btn"))
        plain_note = gr.Markdown(PLAIN_TEXT_NOTE, visible=False, elem_id="plain-text-note")
        canvas = LayoutCanvas(elem_id="layout-canvas")

        def show_canvas(value: dict, result: dict) -> dict:
            """The canvas, hidden in plain-text mode (its boxes would be stale: the model reads none)."""
            state = result.get("state")
            if not isinstance(state, EditorState):
                return {canvas: value}
            plain = state.plain_text is not None
            return {canvas: gr.update(value=value, visible="hidden" if plain else True),
                    plain_note: gr.update(visible=plain)}

        ui.add("canvas", canvas, also=(plain_note,), render=show_canvas)

    def _layout_inspector(self, ui: Components) -> None:
        ui.add("tokens", gr.Markdown(elem_id="token-count"))
        with gr.Accordion("Selected element", open=True, elem_id="element-panel"):
            ui.add("el_title", gr.Markdown())
            ui.add("el_type", gr.Radio(["obj", "text"], label="Type", value="obj"))
            ui.add("el_text", gr.Textbox(label="Literal text to render (multi-line)", lines=2,
                                         elem_id="element-text"))
            ui.add("el_desc", gr.Textbox(label="Description", lines=2, elem_id="element-desc"))
            ui.add("el_has_box", gr.Checkbox(label="Has a box (off: the model places it)", value=False))
            ui.add("el_palette_count", gr.Slider(0, ELEMENT_PALETTE_SLOTS, step=1, value=0,
                                                 label="Element palette: number of colours"))
            with gr.Row():
                el_pickers = [ui.add(name, gr.ColorPicker(label=f"{i + 1}", visible=False, min_width=60))
                              for i, name in enumerate(EL_PICKERS)]
            ui.add("issues_element", gr.Markdown())
        with gr.Accordion("Scene", open=True, elem_id="scene-panel"):
            with gr.Row(equal_height=False):
                ui.add("hld", gr.Textbox(label="High-level description", lines=2, elem_id="scene-hld", scale=4))
                ui.add("expand", gr.Button("Expand", elem_id="expand-btn", size="sm", scale=1, min_width=80))
            ui.add("expand_note", gr.Markdown(
                "Expand: a language model writes the whole caption from the description (or the "
                "plain-text prompt), keeping your elements.", elem_id="expand-note"))
            ui.add("background", gr.Textbox(label="Background", lines=2, elem_id="scene-background"))
            style_kind = gr.Radio(["none", "photo", "art"], value="none", label="Style block")
            with gr.Column(visible=False) as style_box:
                ui.add("aesthetics", gr.Textbox(label="aesthetics"))
                ui.add("lighting", gr.Textbox(label="lighting"))
                photo_or_art = ui.add("photo_or_art", gr.Textbox(label=STYLE_FIELD_LABELS["photo"]))
                ui.add("medium", gr.Dropdown(list(MEDIUM_CHOICES), label="medium", allow_custom_value=True))
                ui.add("palette_count", gr.Slider(0, IMAGE_PALETTE_SLOTS, step=1, value=0,
                                                  label="Image palette: number of colours"))
                scene_pickers = []
                for start in range(0, IMAGE_PALETTE_SLOTS, 8):
                    with gr.Row():
                        scene_pickers += [ui.add(SCENE_PICKERS[i], gr.ColorPicker(
                            label=f"{i + 1}", visible=False, min_width=60)) for i in range(start, start + 8)]
            ui.add("issues_scene", gr.Markdown())
        with gr.Accordion("Caption JSON", open=True, elem_id="json-panel"):
            ui.add("json", gr.Textbox(label="Caption JSON (edit or paste; the model receives the compact form)",
                                      show_label=False, elem_id="caption-json", lines=10, max_lines=24,
                                      buttons=["copy"]))
            ui.add("json_status", gr.Markdown(elem_id="json-status"))
            with gr.Row():
                ui.add("import", gr.UploadButton("Import caption / PNG", file_types=[".json", ".txt", ".png"],
                                                 type="filepath", size="sm", elem_id="import-btn"))
                ui.add("export", gr.Button("Export caption", size="sm"))
            ui.add("export_file", gr.File(label="Exported caption", interactive=False, visible=False))
        with gr.Accordion("Caption check", open=True, elem_id="check-panel"):
            ui.add("issues_all", gr.Markdown(elem_id="caption-issues"))
        with gr.Accordion("Canvas background (reference or last result)", open=False):
            ui.add("canvas_bg", CheckedImage(label="Reference image", type="filepath", height=140,
                                             image_mode=None, limits=self.limits))
            ui.add("canvas_opacity", gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Opacity"))
            ui.add("use_last", gr.Button("Use the last result", size="sm"))

        def show_style(kind: str, result: dict) -> dict:
            label = STYLE_FIELD_LABELS.get(kind, STYLE_FIELD_LABELS["photo"])
            return {style_kind: kind, style_box: gr.update(visible=kind != "none"), photo_or_art: gr.update(label=label)}

        ui.add("style_kind", style_kind, also=(style_box, photo_or_art), render=show_style)
        ui.add_view("el_palette", el_pickers, _picker_row(el_pickers, "el_palette_count"))
        ui.add_view("palette", scene_pickers, _picker_row(scene_pickers, "palette_count"))

    def _layout_generate(self, ui: Components) -> None:
        """Generate (the one primary button) and Stop (neutral until a run is active), the settings
        every run needs, the status line and the results, largest the newest; the rest in accordions."""
        default_size = (DEFAULTS["width"], DEFAULTS["height"])
        with gr.Row(elem_id="run-bar", equal_height=True):
            ui.add("generate", gr.Button(GENERATE_LABEL, variant="primary", scale=3, elem_id="generate-btn"))
            ui.add("stop", gr.Button("Stop", variant="secondary", scale=1, min_width=70, elem_id="stop-btn"))
        ui.add("gen_status", gr.Markdown(elem_id="gen-status"))
        # The running generation's phase and time left, written by the page's timer. Its own line, not
        # gen_status: a tick answered just after the run's "Done" must not overwrite it (it lands here,
        # hidden by then).
        ui.add("live_status", gr.Markdown(visible=False, elem_id="live-status"))
        ui.add("live_seen", gr.State(0))
        ui.add("live_timer", gr.Timer(LIVE_TICK_S, active=False))
        # The live preview lies over the gallery (app.py's style sheet), so showing and hiding it never
        # moves anything else on the page.
        with gr.Column(elem_id="results-stack"):
            ui.add("live_preview", gr.Image(label="Live preview (approximate colours; the final image follows)",
                                            type="pil", interactive=False, visible=False, height=LIVE_HEIGHT,
                                            elem_id="live-preview", buttons=[]))
            gallery = gr.Gallery(label="Results", elem_id="gallery", columns=4, height=RESULTS_HEIGHT, format="png",
                                 object_fit="contain", preview=True, buttons=["download", "fullscreen"])
        ui.add("gallery", gallery, render=lambda items, result: {
            gallery: gr.update(value=items, selected_index=result.get("selected_result"))})
        with gr.Row(equal_height=True):
            ui.add("preset", gr.Dropdown(list(PRESET_LABELS), value=PRESET_BY_NAME[DEFAULTS["preset"]],
                                         label=SETTING_LABELS["preset"], elem_id="preset", min_width=120))
            ui.add("aspect", gr.Dropdown(
                list(ASPECT_PRESETS) + [CUSTOM_SIZE], label="Aspect / size", min_width=120, elem_id="aspect",
                value=next((label for label, size in ASPECT_PRESETS.items() if size == default_size), CUSTOM_SIZE)))
            ui.add("num_images", gr.Number(DEFAULTS["num_images"], label=SETTING_LABELS["num_images"], precision=0,
                                           minimum=1, maximum=self.limits.max_images, step=1, min_width=70,
                                           scale=0, elem_id="num-images"))
        with gr.Row(equal_height=True):
            ui.add("width", gr.Number(DEFAULTS["width"], label=SETTING_LABELS["width"], precision=0, step=16,
                                      elem_id="width", min_width=80))
            ui.add("height", gr.Number(DEFAULTS["height"], label=SETTING_LABELS["height"], precision=0,
                                       step=16, elem_id="height", min_width=80))
            ui.add("seed", gr.Number(0, label=SETTING_LABELS["seed"], precision=0, elem_id="seed", min_width=80))
            ui.add("randomize", gr.Checkbox(True, label="New seed each run", min_width=80, elem_id="randomize"))
        ui.add("size_note", gr.Markdown(f"{DEFAULTS['width']} × {DEFAULTS['height']} px", elem_id="size-note"))
        with gr.Accordion("Advanced: steps, guidance, img2img", open=False, elem_id="advanced-panel"):
            with gr.Row():
                ui.add("steps", gr.Number(None, label=SETTING_LABELS["num_inference_steps"], precision=0,
                                          minimum=1, maximum=self.limits.max_steps, elem_id="steps",
                                          info=f"empty: the preset's; at most {self.limits.max_steps}"))
                ui.add("guidance", gr.Number(None, label=SETTING_LABELS["cfg_scale"], elem_id="guidance",
                                             info="empty: the preset's schedule (7, then 3 for the last steps)"))
            ui.add("input_image", CheckedImage(label=SETTING_LABELS["input_image"], type="filepath",
                                               height=140, image_mode=None, limits=self.limits))
            ui.add("strength", gr.Slider(0.05, 1.0, value=IMG2IMG_STRENGTH, step=0.05,
                                         label=SETTING_LABELS["denoising_strength"],
                                         info="1.0 ignores the input image"))
        self._layout_loras(ui)
        with gr.Accordion("Selected result", open=True, elem_id="result-panel"):
            with gr.Row():
                ui.add("open_result", gr.Button("Open in editor", size="sm", elem_id="open-in-editor"))
                ui.add("open_png", gr.UploadButton("Open a PNG made by this app", file_types=[".png"],
                                                   type="filepath", size="sm"))
            with gr.Row():
                ui.add("overlay", gr.Image(label="Placement overlay (boxes over the result)", type="filepath",
                                           interactive=False, elem_id="overlay", height=220))
                ui.add("result_settings", gr.JSON(label="Caption and settings", elem_id="result-settings",
                                                   height=220))

    def _layout_loras(self, ui: Components) -> None:
        """The LoRA picker: files of the server's LoRA folder, a scale slider per selected one, and
        the upload (shown by the page-load event to operators only)."""
        with gr.Accordion("LoRAs (optional)", open=True, elem_id="lora-panel"):
            ui.add(PICKER, gr.Dropdown([], value=[], multiselect=True, max_choices=MAX_LORAS, label=SETTING_LABELS[PICKER],
                                       elem_id="lora-pick", info=f"up to {MAX_LORAS}, from the server's LoRA folder"))
            sliders = [ui.add(name, gr.Slider(SCALE_MIN, SCALE_MAX, value=1.0, step=0.05, label="scale",
                                              visible=False, elem_id=f"lora-scale-{i}"))
                       for i, name in enumerate(LORA_SCALES)]
            ui.add("lora_shown", gr.State([]))
            ui.add("lora_upload", gr.UploadButton("Add a LoRA file (.safetensors)", file_types=[".safetensors"],
                                                  type="filepath", visible=False, size="sm", elem_id="lora-upload"))
            ui.add("lora_note", gr.Markdown(elem_id="lora-note"))

        def render_scales(selection: list[tuple[str, float]], result: dict) -> dict:
            return {slider: gr.update(visible=i < len(selection), label=f"{selection[i][0]} scale"
                                      if i < len(selection) else "scale",
                                      value=selection[i][1] if i < len(selection) else 1.0)
                    for i, slider in enumerate(sliders)}

        ui.add_view("lora_scales", sliders, render_scales)

    @staticmethod
    def _on(ui: Components, triggers, handler, inputs: list[str], **event) -> None:
        """`Components.on`, with handlers that read the session's state refused for a lost session."""
        ui.on(triggers, _needs_session(handler) if inputs[:1] == ["state"] else handler, inputs, **event)

    def _wire_editor(self, ui: Components) -> None:
        # Text fields listen to `input` (Gradio fires it on key presses) and `blur` (which catches pasted
        # text, for which Gradio fires no `input`). Never `change`: it also fires for values the app
        # itself sets, and such echoes, processed after a newer edit, would undo that edit.
        on = functools.partial(self._on, ui)

        def on_user_text(name: str, handler, inputs: list[str]) -> None:
            on([ui[name].input, ui[name].blur], handler, inputs, trigger_mode="always_last", **GLUE)

        ui.on(ui.demo.load, self.on_page_load, ["saved", "browser_id"], api_visibility="private",
              show_progress="hidden")
        on(ui["canvas"].edit, self.on_canvas_edit, ["state"], trigger_mode="multiple", **GLUE)
        on_user_text("json", self.on_json_input, ["state", "json"])
        for field in ("type", "has_box"):
            on(ui[f"el_{field}"].input, self.on_element_field(field), ["state", f"el_{field}"], **GLUE)
        for field in ("text", "desc"):
            on_user_text(f"el_{field}", self.on_element_field(field), ["state", f"el_{field}"])
        palette_inputs = ["state", "el_palette_count", *EL_PICKERS]
        on([ui[name].input for name in palette_inputs[1:]], self.on_element_palette, palette_inputs,
           trigger_mode="always_last", **GLUE)
        on(ui["add_obj"].click, self.on_add_element("obj"), ["state"], **GLUE)
        on(ui["add_text"].click, self.on_add_element("text"), ["state"], **GLUE)
        on_user_text("hld", self.on_high_level_description, ["state", "hld"])
        on_user_text("background", self.on_background_text, ["state", "background"])
        on(ui["style_kind"].input, self.on_style_kind, ["state", "style_kind"], **GLUE)
        for field in ("aesthetics", "lighting", "photo_or_art", "medium"):
            on_user_text(field, self.on_style_field(field), ["state", field])
        palette_inputs = ["state", "palette_count", *SCENE_PICKERS]
        on([ui[name].input for name in palette_inputs[1:]], self.on_style_palette, palette_inputs,
           trigger_mode="always_last", **GLUE)
        on(ui["undo"].click, self.on_undo, ["state"], **GLUE)
        # The GPU group: a local language model is not thread-safe and shares the GPU with generations.
        on(ui["expand"].click, self.on_expand, ["state", "hld", "json"], api_visibility="private",
           concurrency_id=GPU, concurrency_limit=1, show_progress_on=[ui["expand_note"]])
        on(ui["redo"].click, self.on_redo, ["state"], **GLUE)
        on(ui["import"].upload, self.on_import_file, ["state", "import"], **GLUE)
        on(ui["export"].click, self.on_export, ["state"], api_visibility="private", concurrency_limit=None)
        on(ui["aspect"].input, self.on_aspect_preset, ["state", "aspect"], **GLUE)
        for side in ("width", "height"):
            on_user_text(side, self.on_custom_size(side), ["state", side])
        on([ui["canvas_bg"].upload, ui["canvas_bg"].clear, ui["canvas_opacity"].release], self.on_canvas_background,
           ["state", "canvas_bg", "canvas_opacity"], **GLUE)
        on(ui["use_last"].click, self.on_use_last_result, ["state", "results", "canvas_opacity"], **GLUE)

    def _wire_generate(self, ui: Components) -> None:
        on = functools.partial(self._on, ui)
        # Three events in a chain: the button is disabled and the status cleared at once (before the
        # run waits in the GPU queue, whose position the gallery's progress shows), the run, and the
        # buttons restored whether the run succeeded or failed (`then`, not `success`).
        started = _Chained(ui["generate"].click)
        quick = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
        ui.on(started, self.on_run_start, **quick)
        generated = _Chained(started.event.then)
        on(generated, self.on_generate,
           ["state", "browser_id", "preset", "width", "height", "seed", "randomize", "num_images", "input_image",
            "strength", "steps", "guidance", PICKER, *LORA_SCALES],
           api_visibility="private", concurrency_id=GPU, concurrency_limit=1, show_progress_on=[ui["gallery"]])
        ui.on(generated.event.then, self.on_run_end, **quick)
        ui.on(ui["live_timer"].tick, self.on_live_tick, ["live_seen"], **quick)
        # `change`, not `input`: the sliders must follow a selection set by the app too (the Train
        # tab's "Use in Generate"); the app's own full updates set "lora_shown" with it, so their
        # echo finds nothing to do.
        ui.on(ui[PICKER].change, self.on_lora_pick, [PICKER, "lora_shown", *LORA_SCALES], **GLUE)
        ui.on(ui["lora_upload"].upload, self.on_lora_upload, ["lora_upload", PICKER], api_visibility="private",
              concurrency_id="lora_upload", concurrency_limit=1)
        ui.on(ui["stop"].click, self.on_stop, api_visibility="private", concurrency_limit=None, show_progress="hidden")
        ui.on(ui["gallery"].select, self.on_result_select, ["results"], **GLUE)
        on(ui["open_result"].click, self.on_open_result, ["state", "results", "selected_result"], **GLUE)
        on(ui["open_png"].upload, self.on_open_png, ["state", "open_png"], **GLUE)

    # ---- view assembly ---------------------------------------------------------------------

    def editor_view(self, state: EditorState, *, fields: bool = True, json_text: bool = True,
                    status: str | None = None) -> dict:
        """Everything the tab derives from `state` (plain-text `status` is escaped here). A caption
        that an edit made longer than the limit is refused before anything else is derived."""
        prompt = prompt_text(state)
        try:
            self.limits.check_caption_chars(prompt)
        except ValueError as err:
            raise gr.Error(f"This edit is not applied: {err}") from None
        issues = [] if views.is_blank(state) else views.caption_issues(state)  # nothing typed yet: nothing wrong
        element_issues, scene_issues = views.split_issues(state, issues)
        out = {
            "state": state,
            "saved": editor.saved_copy(state),
            "canvas": views.canvas_value(state, issues),
            "issues_all": ("Plain-text prompt: the verifier checks JSON captions only." if state.plain_text is not None
                           else views.BLANK_NOTE if views.is_blank(state) else views.issue_summary(issues)),
            "issues_element": views.issues_markdown(element_issues),
            "issues_scene": views.issues_markdown(scene_issues),
            "tokens": views.token_label(prompt, self.slot.token_counter()),
        }
        if json_text:
            out["json"] = views.json_text(state)
        if status is not None:
            out["json_status"] = escape(status) if status else ""
        if fields:
            out.update(views.inspector_values(state))
            out.update(views.scene_values(state))
        return out

    @emits(*PAGE_LOAD_VIEW)
    def on_page_load(self, saved, browser_id, request: gr.Request = None) -> dict:
        """A new session: the caption and size the browser kept, this user's results from disk, and a
        browser id for a browser that has none yet."""
        out: dict = {}
        state, status = self._restored(saved)
        if not is_browser_id(browser_id):
            browser_id = out["browser_id"] = new_browser_id()
        results = list_results(output_dir() / owner_folder(getattr(request, "username", None), browser_id))
        if results:
            out.update(self._result_view(results, len(results) - 1))  # the newest result, shown large
        out.update(self.editor_view(state, status=status), results=results, gallery=gallery_items(results),
                   width=state.width, height=state.height, size_note=f"{state.width} × {state.height} px",
                   aspect=next((label for label, size in ASPECT_PRESETS.items() if size == (state.width, state.height)),
                               CUSTOM_SIZE))
        out[PICKER] = picker_update([])
        out["lora_upload"] = gr.update(visible=self.policy.is_operator(request))
        return out

    def _restored(self, saved) -> tuple[EditorState, str | None]:
        """The state for the browser's copy (see editor.saved_copy) and what to tell the user; the
        copy is client data, so every part of it is checked."""
        if saved is None:
            return EditorState(), None
        caption = saved.get("caption") if isinstance(saved, dict) else None
        if not isinstance(caption, str):
            return EditorState(), "The caption kept in this browser is not in the expected form; starting empty."
        try:
            check_text("the caption kept in this browser", caption, self.limits)
            state = editor.restore(caption)
        except ValueError as err:
            return EditorState(), f"The caption kept in this browser could not be restored: {err}"
        try:
            size = checked_size(saved.get("width"), saved.get("height"), self.limits)
            state.width, state.height = size.width, size.height
        except SettingsError:
            pass  # keep the default size
        if state.plain_text is None and not state.elements and state.caption == EditorState().caption:
            return state, None
        return state, "Restored the caption kept in this browser."

    # ---- canvas and JSON ---------------------------------------------------------------------

    @emits(*EDITOR_VIEW)
    def on_canvas_edit(self, state: EditorState, evt: gr.EventData) -> dict:
        try:
            new = editor.apply_canvas_op(state, evt._data)
        except CanvasOpError as err:
            warn(str(err))
            return {}
        return self.editor_view(new, status="")

    @emits(*EDITOR_VIEW)
    def on_json_input(self, state: EditorState, text: str) -> dict:
        result = editor.ingest_json(state, text)
        if not result.accepted:
            return {"json_status": escape(result.status) + ("\n\n" + views.issues_markdown(result.issues)
                                                            if result.issues else "")}
        if result.state is state:
            return {}
        return self.editor_view(result.state, json_text=False, status=result.status)

    # ---- inspector and scene fields ------------------------------------------------------------

    def on_element_field(self, field: str):
        @emits(*EDITOR_VIEW)
        def handler(state: EditorState, value) -> dict:
            try:
                new = editor.set_element_field(state, field, value)
            except ValueError as err:
                warn(str(err))
                return {}
            if new is state:
                return {}
            return self.editor_view(new, fields=field in ("type", "has_box"))
        return _named(handler, f"on_element_{field}")

    @emits(*EDITOR_VIEW)
    def on_element_palette(self, state: EditorState, count, *colors: str) -> dict:
        new = editor.set_element_field(state, "palette", editor.palette_from_pickers(count, list(colors)))
        out = self.editor_view(new, fields=False)
        out["el_palette_count"] = len((new.selected_element() or {}).get("color_palette") or [])
        out["el_palette"] = views.inspector_values(new)["el_palette"]
        return out

    def on_add_element(self, kind: str):
        @emits(*EDITOR_VIEW)
        def handler(state: EditorState) -> dict:
            return self.editor_view(editor.add_element(state, kind))
        return _named(handler, f"on_add_{kind}")

    @emits(*EDITOR_VIEW)
    def on_high_level_description(self, state: EditorState, text: str) -> dict:
        new = editor.set_high_level_description(state, text)
        return {} if new is state else self.editor_view(new, fields=False)

    @emits(*EDITOR_VIEW)
    def on_background_text(self, state: EditorState, text: str) -> dict:
        new = editor.set_background(state, text)
        return {} if new is state else self.editor_view(new, fields=False)

    @emits(*EDITOR_VIEW)
    def on_style_kind(self, state: EditorState, kind: str) -> dict:
        new = editor.set_style_kind(state, kind)
        return {} if new is state else self.editor_view(new)

    def on_style_field(self, field: str):
        @emits(*EDITOR_VIEW)
        def handler(state: EditorState, value) -> dict:
            new = editor.set_style_field(state, field, value)
            return {} if new is state else self.editor_view(new, fields=False)
        return _named(handler, f"on_style_{field}")

    @emits(*EDITOR_VIEW)
    def on_style_palette(self, state: EditorState, count, *colors: str) -> dict:
        new = editor.set_style_field(state, "palette", editor.palette_from_pickers(count, list(colors)))
        if new is state:
            return {}
        scene = views.scene_values(new)
        return {**self.editor_view(new, fields=False), "palette": scene["palette"],
                "palette_count": scene["palette_count"]}

    @emits(*EDITOR_VIEW, "expand_note")
    def on_expand(self, state: EditorState, description: str, json_text: str, request: gr.Request = None) -> dict:
        """The idea (the description field; in plain-text mode the plain text, as typed in the JSON
        box) -> a caption from the server's language model, at the canvas's size, keeping the current
        caption's elements. One undo step restores the previous layout (or plain text)."""
        if state.plain_text is not None:
            try:  # the box may hold text typed since the state's last update
                typed = parse(json_text or "")
            except (CaptionSyntaxError, CaptionFormatError):
                typed = None
            idea = typed.text if isinstance(typed, PlainText) and typed.text.strip() else state.plain_text
            keep = None
        else:
            idea = description if (description or "").strip() else state.caption.get("high_level_description")
            keep = state.caption if state.caption != empty_caption() else None
        if not (idea or "").strip():
            raise gr.Error("Write a short idea in High-level description first (or a plain-text prompt in the "
                           "JSON box), then press Expand.")
        try:
            result = self.expander.expand(idea, state.width, state.height, keep=keep,
                                          metered=not self.policy.is_operator(request))
        except ExpandError as err:
            message = self.expander.message(err, detail=self.policy.is_operator(request))
            raise gr.Error(f"Expand: {message}", duration=None) from None
        note = expansion_note(result)
        return {**self.editor_view(editor.load_caption(state, result.caption), status=""),
                "expand_note": escape(note)}

    @emits(*EDITOR_VIEW)
    def on_undo(self, state: EditorState) -> dict:
        return self.editor_view(editor.apply_canvas_op(state, {"op": "undo"}))

    @emits(*EDITOR_VIEW)
    def on_redo(self, state: EditorState) -> dict:
        return self.editor_view(editor.apply_canvas_op(state, {"op": "redo"}))

    # ---- templates, files, size, background -------------------------------------------------

    @emits(*OPEN_VIEW)
    def on_import_file(self, state: EditorState, path: str | None) -> dict:
        """A caption file (.json/.txt) or a PNG made by this app."""
        if not path:
            return {}
        if Path(path).suffix.lower() in (".png", ".webp", ".jpg", ".jpeg"):
            return self.on_open_png(state, path)
        name = upload_name(path)
        try:
            text = read_text_upload(path, self.limits)
        except ValueError as err:
            warn(str(err))
            return {"json_status": f"**Cannot import:** {escape(err)}"}
        result = editor.ingest_json(state, text)
        if not result.accepted:
            warn(f"{name}: {result.status}")
            return {"json_status": f"{escape(name)}: {escape(result.status)}\n\n" + views.issues_markdown(result.issues)}
        return self.editor_view(result.state, status=f"Imported {name}.")

    @emits("export_file")
    def on_export(self, state: EditorState) -> dict:
        """The caption as a canonical .json file (or .txt for plain text) for download; the file is
        temporary (results.scratch_file)."""
        if state.plain_text is not None:
            path = scratch_file("prompt.txt")
            path.write_text(state.plain_text, encoding="utf-8")
        else:
            path = scratch_file("caption.json")
            path.write_text(to_json(state.caption), encoding="utf-8")
        return {"export_file": gr.update(value=str(path), visible=True)}

    @emits(*SIZE_VIEW)
    def on_aspect_preset(self, state: EditorState, label: str) -> dict:
        if label not in ASPECT_PRESETS:
            return {}
        return self._resize(state, *ASPECT_PRESETS[label])

    def on_custom_size(self, side: str):
        """Width or height typed by the user; one side per event (see editor.set_style_field)."""
        @emits(*SIZE_VIEW)
        def handler(state: EditorState, value) -> dict:
            width, height = (value, state.height) if side == "width" else (state.width, value)
            if (width, height) == (state.width, state.height):
                return {}
            return self._resize(state, width, height, custom=True)
        return _named(handler, f"on_custom_{side}")

    def _resize(self, state: EditorState, width, height, custom: bool = False) -> dict:
        try:
            size = checked_size(width, height, self.limits)
        except SettingsError as err:
            return {"size_note": f"**Invalid size:** {escape(describe_problems(err, SETTING_LABELS))}"}
        new = copy.deepcopy(state)
        new.width, new.height = size.width, size.height
        out = {"state": new, "saved": editor.saved_copy(new), "canvas": views.canvas_value(new), "width": size.width,
               "height": size.height, "size_note": " · ".join(f"**Note:** {escape(n)}" for n in size.warnings)
               or f"{size.width} × {size.height} px"}
        if custom:
            out["aspect"] = CUSTOM_SIZE
        return out

    @emits("state", "canvas")
    def on_canvas_background(self, state: EditorState, image_path: str | None, opacity: float) -> dict:
        if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0.0 <= opacity <= 1.0:
            raise gr.Error(f"Opacity must be a number from 0 to 1, got {opacity!r}")
        new = copy.deepcopy(state)
        new.background_image = image_path or None
        new.background_opacity = float(opacity)
        return {"state": new, "canvas": views.canvas_value(new)}

    @emits("state", "canvas")
    def on_use_last_result(self, state: EditorState, results: list[dict], opacity: float) -> dict:
        if not results:
            warn("no result yet: generate an image first")
            return {}
        return self.on_canvas_background(state, results[-1]["path"], opacity)

    # ---- generate ----------------------------------------------------------------------------

    @emits(*RUN_VIEW)
    def on_run_start(self, request: gr.Request = None) -> dict:
        """The moment Generate is clicked: the button says the run is on and cannot start a second one,
        Stop turns red, the last run's status goes, and the timer starts fetching previews. (Stop stays
        clickable between runs: the history's and the region edit's runs are stopped with it too.)"""
        return {"generate": gr.update(value=RUNNING_LABEL, interactive=False),
                "stop": gr.update(variant="stop"), "gen_status": "",
                "live_status": gr.update(value="Waiting for the GPU queue…", visible=True),
                "live_timer": gr.Timer(active=True), "live_seen": 0, "live_preview": gr.update(value=None)}

    @emits(*RUN_VIEW)
    def on_run_end(self, request: gr.Request = None) -> dict:
        """After the run, however it ended: Generate back, Stop neutral, the timer and the preview off
        (the gallery now shows the result). The run's own handler has written the status."""
        self.live.finish(_session(request))
        return {"generate": gr.update(value=GENERATE_LABEL, interactive=True),
                "stop": gr.update(variant="secondary"), "live_timer": gr.Timer(active=False),
                "live_status": gr.update(value="", visible=False),
                "live_preview": gr.update(visible=False)}

    @emits("live_status", "live_seen", "live_preview")
    def on_live_tick(self, seen, request: gr.Request = None) -> dict:
        """The running generation's phase and newest preview, when they changed since `seen`."""
        live = self.live.read(_session(request))
        if live is None or live.version == seen:
            return {}
        out = {"live_seen": live.version, "live_status": escape(live.label)}
        if live.preview is not None:
            out["live_preview"] = gr.update(value=live.preview, visible=True)
        return out

    @emits(*GENERATE_VIEW)
    def on_generate(self, state: EditorState, browser_id, preset: str, width, height, seed, randomize: bool,
                    num_images, input_image: str | None, strength, steps=None, guidance=None,
                    lora_pick: list[str] | None = None, lora_scale_0=1.0, lora_scale_1=1.0, lora_scale_2=1.0,
                    lora_scale_3=1.0, request: gr.Request = None, progress=gr.Progress()) -> dict:
        """Run the pipeline for this session's caption with the picked LoRAs at their slider scales;
        the results are written to this user's folder and the gallery lists that folder. While it
        runs, its phase, time left and previews go to `self.live` for the page's timer (on_live_tick).
        No model loaded is an expected situation, not a failure: a warning and the how-to in the status."""
        loaded = self.slot.loaded
        if loaded is None:
            warn(NO_MODEL)
            return {"gen_status": HOW_TO_GET_WEIGHTS}
        pipe = loaded.pipe
        try:
            settings = settings_from_controls(preset=preset, width=width, height=height, seed=seed,
                                              randomize=randomize, num_images=num_images, input_image=input_image,
                                              strength=strength, steps=steps, guidance=guidance, limits=self.limits)
            loras = checked_selection(lora_pick, [lora_scale_0, lora_scale_1, lora_scale_2, lora_scale_3],
                                      SETTING_LABELS[PICKER])
            folder = owner_folder(getattr(request, "username", None), browser_id)
            run = pipe.prepare(prompt_text(state), settings)  # caption, token count, input image
        except SettingsError as err:
            raise gr.Error(describe_problems(err, SETTING_LABELS), duration=None) from None
        except ValueError as err:
            raise gr.Error(str(err), duration=None) from None
        for warning in settings.warnings:
            warn(warning)
        session = _session(request)
        stop_event = self.stops.start(session)
        megapixels = settings.num_images * settings.width * settings.height / 1e6
        clock = RunClock(settings.sampler.steps, megapixels, self.decode_times.estimate(pipe, megapixels))
        steps_done = {"n": 0}
        self.live.start(session, clock.start())

        def on_step(step: int, total: int) -> None:
            steps_done["n"] = step
            label = clock.step(step)
            self.live.update(session, label=label)
            progress((step, total), desc=f"denoising step {step}/{total} · {label}", unit="steps")

        def on_preview(step: int, total: int, image) -> None:
            self.live.update(session, preview=image)

        progress(0, desc="encoding the text")
        try:
            images = generate_images(pipe, run, on_step=on_step, stop_event=stop_event, loras=loras,
                                     preview=on_preview)
        except GenerationCancelled:
            return {"gen_status": f"Stopped after step {steps_done['n']}; nothing was saved.", "seed": settings.seed,
                    "live_preview": gr.update(visible=False)}
        except (ValueError, GenerationFailed) as err:
            raise gr.Error(str(err), duration=None) from None
        finally:
            self.stops.finish(session)
            self.live.finish(session)
        decoded_in = clock.decode_seconds()
        if decoded_in is not None:
            self.decode_times.record(pipe, megapixels, decoded_in)
        directory = results_dir(folder)
        saved = save_results(images, directory)
        results = list_results(directory)  # the newest, so what was just made is last
        used = saved[0]["settings"].get("loras")  # what the pipeline recorded, not what was asked for
        # The preview goes in the same update as the new result, so the gallery is in its final place
        # when it scrolls its selected thumbnail into view.
        return {"results": results, "gallery": gallery_items(results), "seed": settings.seed,
                "live_preview": gr.update(visible=False),
                "gen_status": escape(f"Done: {len(images)} image(s), seed {settings.seed}, "
                                     f"{settings.width}×{settings.height}, {settings.preset}, "
                                     f"{settings.sampler.steps} steps, "
                                     f"{'LoRAs ' + describe_loras(used) if used else 'no LoRA'}."),
                **self._result_view(results, len(results) - 1)}

    @emits()
    def on_stop(self, request: gr.Request) -> dict:
        """Signal this session's run. Only toasts here: the run's own handler writes the final status,
        and a status written by Stop could arrive after it."""
        if self.stops.stop(_session(request)):
            inform("Stopping after the current step…")
        else:
            warn("Nothing is running.")
        return {}

    @staticmethod
    def _result_view(results: list[dict], index: int) -> dict:
        return {"selected_result": index, "result_settings": result_details(results[index]),
                "overlay": overlay_for(results[index])}

    @emits(*RESULT_VIEW)
    def on_result_select(self, results: list[dict], evt: gr.SelectData) -> dict:
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) and evt.index else evt.index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(results):
            return {}
        return self._result_view(results, index)

    @emits(*OPEN_VIEW)
    def on_open_result(self, state: EditorState, results: list[dict], selected: int | None) -> dict:
        if selected is None or not 0 <= selected < len(results):
            warn("select a result in the gallery first")
            return {}
        return self._open_record(state, {"prompt": results[selected]["prompt"],
                                         "settings": results[selected]["settings"]}, "the selected result")

    @emits(*OPEN_VIEW)
    def on_open_png(self, state: EditorState, path: str | None) -> dict:
        if not path:
            return {}
        name = upload_name(path)
        try:
            self.limits.check_upload_bytes(name, os.path.getsize(path))
            record = read_image_metadata(path)
        except (NoImageMetadataError, Image.DecompressionBombError, OSError, ValueError) as err:
            message = str(err).replace(str(path), name) if not isinstance(err, OSError) else \
                f"{name} cannot be read on the server; upload it again"
            warn(message)
            return {"json_status": f"**Cannot open:** {escape(message)}"}
        return self._open_record(state, record, name)

    def _open_record(self, state: EditorState, record: dict, where: str) -> dict:
        """Restore caption and generation settings from a result record / PNG metadata (a PNG's
        metadata is client data: the prompt and every setting are checked before use)."""
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            warn(f"{where}: its metadata holds no prompt text")
            return {}
        try:
            check_text(f"{where}: the prompt", prompt, self.limits)
        except ValueError as err:
            warn(str(err))
            return {}
        result = editor.ingest_json(state, prompt)
        if not result.accepted:
            warn(f"{where}: {result.status}")
            return {}
        new = result.state
        settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
        notes = []
        try:
            size = checked_size(settings.get("width", new.width), settings.get("height", new.height), self.limits)
            new.width, new.height = size.width, size.height
        except SettingsError as err:
            notes.append(f" Its size is not used: {describe_problems(err, SETTING_LABELS)}")
        out = self.editor_view(new, status=f"Opened {where} in the editor." + "".join(notes))
        preset = settings.get("preset")
        if isinstance(preset, str) and preset in PRESET_BY_NAME:
            out["preset"] = PRESET_BY_NAME[preset]
        seed = settings.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= SEED_MAX:
            out["seed"] = seed
            out["randomize"] = False
        out.update({"width": new.width, "height": new.height, "aspect": CUSTOM_SIZE})
        selection, lora_notes = restore_selection(settings.get("loras"))
        out.update(self.lora_view(selection))
        if lora_notes:
            warn(f"{where}: LoRAs: " + "; ".join(lora_notes))
            out["json_status"] += escape(" LoRAs: " + "; ".join(lora_notes) + ".")
        return out

    @staticmethod
    def lora_view(selection: list[tuple[str, float]]) -> dict:
        """The picker, its sliders and what they stand for, all set to `selection` ([(file, scale)])."""
        names = [name for name, _ in selection]
        return {PICKER: picker_update(names), "lora_shown": names, "lora_scales": selection}

    @emits("lora_shown", "lora_scales")
    def on_lora_pick(self, selected: list[str] | None, shown: list[str] | None, *scales) -> dict:
        """The selection changed (by the user, or set by the app): one slider per selected LoRA,
        each keeping the scale it had while it was selected, 1.0 for a newly selected one."""
        selected = [name for name in (selected or []) if isinstance(name, str)][:MAX_LORAS]
        shown = list(shown or [])
        if selected == shown:
            return {}
        kept = dict(zip(shown, scales))
        return {"lora_shown": selected, "lora_scales": [(name, kept.get(name, 1.0)) for name in selected]}

    @emits(PICKER, "lora_note")
    def on_lora_upload(self, path: str | None, selected: list[str] | None, request: gr.Request = None) -> dict:
        """An operator's .safetensors file, checked against the loaded model (or the released one),
        added to the server's LoRA folder and selected. Visitors may only pick: the folder is shared
        by everyone, so adding to it is an operator's job (policy.py), checked here, on the server."""
        if not self.policy.is_operator(request):
            raise gr.Error(f"Only an operator may add LoRA files here: {self.policy.reason(request)}")
        if not path:
            return {}
        uploaded_as = upload_name(path)
        loaded = self.slot.loaded
        try:
            self.limits.check_upload_bytes(uploaded_as, os.path.getsize(path))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                name = add_lora_file(path, upload_file_name(uploaded_as), pipe=loaded.pipe if loaded else None)
        except OSError:
            raise gr.Error(f"{uploaded_as} cannot be read on the server; upload it again") from None
        except ValueError as err:  # limits, UnreadableLora, RejectedLora: they name the file, not the path
            raise gr.Error(str(err).replace(str(path), uploaded_as), duration=None) from None
        notes = [str(w.message).replace(str(path), uploaded_as) for w in caught]
        for note in notes:
            warn(note)
        checked = "the loaded model" if loaded else "the released Ideogram 4 model"
        return {PICKER: picker_update([*(selected or []), name]),
                "lora_note": escape(f"Added {name} (checked against {checked})." + "".join(f" {n}" for n in notes))}


class _Chained:
    """A `Components.on` trigger that keeps the event it creates, so the next handler can follow it
    (`.then`): Gradio returns the event from the listener call, and `on` does not pass it on."""

    def __init__(self, listener):
        self.listener = listener
        self.event = None

    def __call__(self, *args, **kwargs):
        self.event = self.listener(*args, **kwargs)
        return self.event


def _picker_row(pickers: list, count_name: str):
    """Render a palette (a list of colours) onto its row of pickers: the first `result[count_name]`
    are shown, the others hidden (they keep a colour ready for when the count grows)."""
    def render(colors: list[str], result: dict) -> dict:
        count = result.get(count_name, 0)
        return {picker: gr.update(value=color, visible=i < count) for i, (picker, color) in
                enumerate(zip(pickers, colors))}
    return render
