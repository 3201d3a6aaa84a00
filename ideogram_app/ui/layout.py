"""The Blocks layout and its event wiring: components in, handler names out.

Handlers return `{name: value}` dicts; `_bind` turns them into `{component: update}` for Gradio.
UI glue events are private (not on the API page, not MCP tools); generation, model loading and
the `/generate` endpoint share one concurrency group ("gpu", limit 1) so they queue, never collide.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import gradio as gr

from ideogram_app.caption import list_templates
from ideogram_app.model.prompt_tokenizer import MAX_TEXT_TOKENS
from ideogram_app.pipeline.memory import MEMORY_MODES
from ideogram_app.pipeline.sizes import ASPECT_PRESETS

from .api import PublicApi
from .canvas import LayoutCanvas
from .editor import MEDIUM_CHOICES
from .generation import MAX_IMAGES, PRESET_LABELS, output_dir
from .handlers import CUSTOM_SIZE, PRESET_BY_NAME, AppHandlers
from .model_slot import VARIANTS, ModelSlot
from .state import EditorState
from .views import ELEMENT_PALETTE_SLOTS, IMAGE_PALETTE_SLOTS

TITLE = "Ideogram 4 Layout Studio"
LICENCE_NOTE = (
    "Licence: the Ideogram 4 weights are released under the **Ideogram 4 Non-Commercial licence**: images are for "
    "non-commercial use unless you hold a commercial licence from Ideogram. This app's code is separate from the weights."
)
GPU = "gpu"
EDITOR = "editor"
STYLE_FIELD_LABELS = {"photo": "photo (camera, lens, film, framing)", "art": "art_style (technique, school, look)"}
ABOUT = f"""
### About
Draw a layout, get an Ideogram 4 image. Boxes are stored as `[y_min, x_min, y_max, x_max]` on a 0–1000 grid
(y relative to the height, x to the width, origin top-left) — the model's own convention. The caption the model
sees is the canonical compact JSON (`/format_caption`); prompts are limited to {MAX_TEXT_TOKENS} tokens.

### Licence
{LICENCE_NOTE} Read the licence on the model page before using results.

### API and MCP
Public endpoints: `/generate`, `/validate_caption`, `/format_caption`, `/render_layout` — see "Use via API" in the
footer, or call them with `gradio_client`. Start the app with `--mcp` to expose the same four functions as MCP tools
at `/gradio_api/mcp/`.
"""


def build_demo(slot: ModelSlot, default_preset: str = "default") -> gr.Blocks:
    handlers = AppHandlers(slot)
    api = PublicApi(slot)
    gr.set_static_paths([str(output_dir())])
    ui: dict[str, Any] = {}
    el_pickers: list[gr.ColorPicker] = []
    scene_pickers: list[gr.ColorPicker] = []

    with gr.Blocks(title=TITLE, delete_cache=(3600, 24 * 3600)) as demo:
        ui["state"] = gr.State(EditorState())
        ui["results"] = gr.State([])
        ui["selected_result"] = gr.State(None)
        gr.Markdown(f"# {TITLE}\nDraw boxes, describe them, generate. {LICENCE_NOTE}", elem_id="licence-note")

        with gr.Tab("Compose & generate"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    ui["canvas"] = LayoutCanvas(elem_id="layout-canvas")
                    with gr.Row():
                        ui["template"] = gr.Dropdown(list_templates(), label="Template", value=None, scale=3)
                        ui["load_template"] = gr.Button("Reload template", scale=1)
                        ui["add_obj"] = gr.Button("+ obj element", scale=1)
                        ui["add_text"] = gr.Button("+ text element", scale=1)
                    with gr.Accordion("Canvas background (reference or last result)", open=False):
                        with gr.Row():
                            ui["canvas_bg"] = gr.Image(label="Reference image", type="filepath", height=160)
                            with gr.Column():
                                ui["canvas_opacity"] = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Opacity")
                                ui["use_last"] = gr.Button("Use the last result")
                    ui["json"] = gr.Textbox(label="Caption JSON (edit or paste; the model receives the compact form)",
                                            elem_id="caption-json", lines=14, max_lines=28, buttons=["copy"])
                    ui["json_status"] = gr.Markdown(elem_id="json-status")
                    with gr.Row():
                        ui["import"] = gr.UploadButton("Import caption / PNG", file_types=[".json", ".txt", ".png"],
                                                       type="filepath")
                        ui["export"] = gr.Button("Export caption")
                        ui["undo"] = gr.Button("Undo")
                        ui["redo"] = gr.Button("Redo")
                    ui["export_file"] = gr.File(label="Exported caption", interactive=False, visible=False)
                with gr.Column(scale=2):
                    ui["tokens"] = gr.Markdown(elem_id="token-count")
                    with gr.Accordion("Selected element", open=True):
                        ui["el_title"] = gr.Markdown()
                        ui["el_type"] = gr.Radio(["obj", "text"], label="Type", value="obj")
                        ui["el_text"] = gr.Textbox(label="Literal text to render (multi-line)", lines=2,
                                                   elem_id="element-text")
                        ui["el_desc"] = gr.Textbox(label="Description", lines=3, elem_id="element-desc")
                        ui["el_has_box"] = gr.Checkbox(label="Has a box (off: the model places it)", value=False)
                        ui["el_palette_count"] = gr.Slider(0, ELEMENT_PALETTE_SLOTS, step=1, value=0,
                                                           label="Element palette: number of colours")
                        with gr.Row():
                            for i in range(ELEMENT_PALETTE_SLOTS):
                                el_pickers.append(gr.ColorPicker(label=f"{i + 1}", visible=False, min_width=60))
                        ui["issues_element"] = gr.Markdown()
                    with gr.Accordion("Scene", open=True):
                        ui["hld"] = gr.Textbox(label="High-level description", lines=2, elem_id="scene-hld")
                        ui["background"] = gr.Textbox(label="Background", lines=2, elem_id="scene-background")
                        ui["style_kind"] = gr.Radio(["none", "photo", "art"], value="none", label="Style block")
                        with gr.Column(visible=False) as style_box:
                            ui["aesthetics"] = gr.Textbox(label="aesthetics")
                            ui["lighting"] = gr.Textbox(label="lighting")
                            ui["photo_or_art"] = gr.Textbox(label=STYLE_FIELD_LABELS["photo"])
                            ui["medium"] = gr.Dropdown(list(MEDIUM_CHOICES), label="medium", allow_custom_value=True)
                            ui["palette_count"] = gr.Slider(0, IMAGE_PALETTE_SLOTS, step=1, value=0,
                                                            label="Image palette: number of colours")
                            for start in range(0, IMAGE_PALETTE_SLOTS, 8):
                                with gr.Row():
                                    for i in range(start, start + 8):
                                        scene_pickers.append(gr.ColorPicker(label=f"{i + 1}", visible=False,
                                                                            min_width=60))
                        ui["issues_scene"] = gr.Markdown()
                    with gr.Accordion("Caption check", open=True):
                        ui["issues_all"] = gr.Markdown(elem_id="caption-issues")

            gr.Markdown("## Generate")
            with gr.Row(equal_height=False):
                with gr.Column(scale=2):
                    ui["preset"] = gr.Dropdown(list(PRESET_LABELS), value=PRESET_BY_NAME[default_preset],
                                               label="Preset", elem_id="preset")
                    ui["aspect"] = gr.Dropdown(list(ASPECT_PRESETS) + [CUSTOM_SIZE], value="1:1 · 1 MP",
                                               label="Aspect / size preset")
                    with gr.Row():
                        ui["width"] = gr.Number(1024, label="Width", precision=0, step=16, elem_id="width")
                        ui["height"] = gr.Number(1024, label="Height", precision=0, step=16, elem_id="height")
                    ui["size_note"] = gr.Markdown("1024 × 1024 px")
                    with gr.Row():
                        ui["seed"] = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                        ui["randomize"] = gr.Checkbox(True, label="New random seed each run")
                    ui["num_images"] = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Number of images")
                    with gr.Accordion("img2img (optional)", open=False):
                        ui["input_image"] = gr.Image(label="Input image", type="filepath", height=160)
                        ui["strength"] = gr.Slider(0.05, 1.0, value=0.7, step=0.05,
                                                   label="Strength (1.0 = ignore the input)")
                    with gr.Row():
                        ui["generate"] = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                        ui["stop"] = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                    ui["gen_status"] = gr.Markdown(elem_id="gen-status")
                with gr.Column(scale=3):
                    ui["gallery"] = gr.Gallery(label="Results", elem_id="gallery", columns=2, height=420,
                                               format="png", buttons=["download", "fullscreen"])
                    with gr.Row():
                        ui["open_result"] = gr.Button("Open in editor", elem_id="open-in-editor")
                        ui["open_png"] = gr.UploadButton("Open a PNG made by this app", file_types=[".png"],
                                                         type="filepath")
                    with gr.Row():
                        ui["overlay"] = gr.Image(label="Placement overlay (boxes over the result)",
                                                 type="filepath", interactive=False, elem_id="overlay")
                        ui["result_settings"] = gr.JSON(label="Caption and settings of the selected result")

        with gr.Tab("Model"):
            ui["model_status"] = gr.Markdown(elem_id="model-status")
            with gr.Row():
                ui["variant"] = gr.Dropdown(list(VARIANTS), value=next(iter(VARIANTS)), label="Variant")
                ui["model_source"] = gr.Textbox(next(iter(VARIANTS.values())), label="Repo id or local folder")
                ui["memory"] = gr.Radio(list(MEMORY_MODES), value="full", label="Memory mode")
            ui["model_estimate"] = gr.Markdown()
            with gr.Row():
                ui["load_model"] = gr.Button("Load model", variant="primary")
                ui["unload_model"] = gr.Button("Unload")
            gr.Markdown("`full`: everything on the GPU (fastest). `offload`: each part visits the GPU only while it "
                        "runs (peak ≈ one transformer). `cpu`: tiny test models and debugging. Gated weights need "
                        "the licence accepted on the model page and `HF_TOKEN` set.")

        with gr.Tab("About & licence"):
            gr.Markdown(ABOUT)

        ui["style_box"] = style_box
        outputs = [c for c in ui.values()] + el_pickers + scene_pickers
        bind = functools.partial(_bind, ui=ui, el_pickers=el_pickers, scene_pickers=scene_pickers)
        glue = dict(outputs=outputs, api_visibility="private", show_progress="hidden", concurrency_id=EDITOR,
                    concurrency_limit=1)
        state = ui["state"]

        ui["canvas"].edit(bind(handlers.on_canvas_edit), [state], trigger_mode="multiple", **glue)
        # Text fields listen to `input` (Gradio fires it on key presses) and `blur` (which catches pasted
        # text, for which Gradio fires no `input`). Never `change`: it also fires for values the app
        # itself sets, and such echoes, processed after a newer edit, would undo that edit.
        def on_user_text(component, fn, inputs):
            for listener in (component.input, component.blur):
                listener(bind(fn), inputs, trigger_mode="always_last", **glue)

        on_user_text(ui["json"], handlers.on_json_input, [state, ui["json"]])
        for field in ("type", "has_box"):
            ui[f"el_{field}"].input(bind(handlers.on_element_field(field)), [state, ui[f"el_{field}"]], **glue)
        for field in ("text", "desc"):
            on_user_text(ui[f"el_{field}"], handlers.on_element_field(field), [state, ui[f"el_{field}"]])
        for trigger in [ui["el_palette_count"], *el_pickers]:
            trigger.input(bind(handlers.on_element_palette), [state, ui["el_palette_count"], *el_pickers],
                          trigger_mode="always_last", **glue)
        ui["add_obj"].click(bind(handlers.on_add_element("obj")), [state], **glue)
        ui["add_text"].click(bind(handlers.on_add_element("text")), [state], **glue)
        on_user_text(ui["hld"], handlers.on_high_level_description, [state, ui["hld"]])
        on_user_text(ui["background"], handlers.on_background_text, [state, ui["background"]])
        ui["style_kind"].input(bind(handlers.on_style_kind), [state, ui["style_kind"]], **glue)
        for field in ("aesthetics", "lighting", "photo_or_art", "medium"):
            on_user_text(ui[field], handlers.on_style_field(field), [state, ui[field]])
        for trigger in [ui["palette_count"], *scene_pickers]:
            trigger.input(bind(handlers.on_style_palette), [state, ui["palette_count"], *scene_pickers],
                          trigger_mode="always_last", **glue)
        ui["undo"].click(bind(handlers.on_undo), [state], **glue)
        ui["redo"].click(bind(handlers.on_redo), [state], **glue)
        ui["template"].input(bind(handlers.on_load_template), [state, ui["template"]], **glue)
        ui["load_template"].click(bind(handlers.on_load_template), [state, ui["template"]], **glue)
        ui["import"].upload(bind(handlers.on_import_file), [state, ui["import"]], **glue)
        ui["export"].click(handlers.on_export, [state], [ui["export_file"]], api_visibility="private",
                           concurrency_limit=None)
        ui["aspect"].input(bind(handlers.on_aspect_preset), [state, ui["aspect"]], **glue)
        for side in ("width", "height"):
            on_user_text(ui[side], handlers.on_custom_size(side), [state, ui[side]])
        for trigger in (ui["canvas_bg"].upload, ui["canvas_bg"].clear, ui["canvas_opacity"].release):
            trigger(bind(handlers.on_canvas_background), [state, ui["canvas_bg"], ui["canvas_opacity"]], **glue)
        ui["use_last"].click(bind(handlers.on_use_last_result), [state, ui["results"], ui["canvas_opacity"]], **glue)

        ui["generate"].click(
            bind(handlers.on_generate),
            [state, ui["results"], ui["preset"], ui["width"], ui["height"], ui["seed"], ui["randomize"],
             ui["num_images"], ui["input_image"], ui["strength"]],
            outputs, api_visibility="private", concurrency_id=GPU, concurrency_limit=1,
            show_progress_on=[ui["gallery"]])
        ui["stop"].click(bind(handlers.on_stop), None, outputs, api_visibility="private", concurrency_limit=None,
                         show_progress="hidden")
        ui["gallery"].select(bind(handlers.on_result_select), [ui["results"]], **glue)
        ui["open_result"].click(bind(handlers.on_open_result), [state, ui["results"], ui["selected_result"]], **glue)
        ui["open_png"].upload(bind(handlers.on_open_png), [state, ui["open_png"]], **glue)

        ui["variant"].input(bind(handlers.on_variant), [ui["variant"]], **glue)
        for trigger in (ui["variant"], ui["model_source"], ui["memory"]):
            trigger.change(bind(handlers.on_estimate),
                           [ui["variant"], ui["model_source"], ui["memory"], ui["width"], ui["height"]], **glue)
        ui["load_model"].click(bind(handlers.on_load_model), [ui["model_source"], ui["memory"]], outputs,
                               api_visibility="private", concurrency_id=GPU, concurrency_limit=1,
                               show_progress_on=[ui["model_status"]])
        ui["unload_model"].click(bind(handlers.on_unload_model), None, outputs, api_visibility="private",
                                 concurrency_id=GPU, concurrency_limit=1)
        demo.load(bind(handlers.on_page_load), [state], outputs, api_visibility="private", show_progress="hidden")
        demo.load(bind(handlers.on_estimate), [ui["variant"], ui["model_source"], ui["memory"], ui["width"],
                                               ui["height"]], outputs, api_visibility="private",
                  show_progress="hidden")

        gr.api(api.generate, api_name="generate", concurrency_id=GPU, concurrency_limit=1)
        gr.api(api.validate_caption, api_name="validate_caption", concurrency_limit=4)
        gr.api(api.format_caption, api_name="format_caption", concurrency_limit=4)
        gr.api(api.render_layout, api_name="render_layout", concurrency_limit=4)
    return demo


def _bind(fn: Callable[..., dict], *, ui: dict[str, Any], el_pickers: list, scene_pickers: list) -> Callable:
    """Wrap a handler so its `{name: value}` result becomes `{component: update}`. `functools.wraps`
    keeps the signature, so Gradio still injects `gr.Request`, `gr.EventData` and `gr.Progress`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        updates: dict[Any, Any] = {}
        for name, value in out.items():
            if name == "el_palette":
                count = out.get("el_palette_count", 0)
                updates.update({p: gr.update(value=c, visible=i < count) for i, (p, c) in
                                enumerate(zip(el_pickers, value))})
            elif name == "palette":
                count = out.get("palette_count", 0)
                updates.update({p: gr.update(value=c, visible=i < count) for i, (p, c) in
                                enumerate(zip(scene_pickers, value))})
            elif name in ui:
                updates[ui[name]] = value
        kind = out.get("style_kind")
        if kind is not None:
            updates[ui["style_box"]] = gr.update(visible=kind != "none")
            field = {"label": STYLE_FIELD_LABELS.get(kind, STYLE_FIELD_LABELS["photo"])}
            if "photo_or_art" in out:
                field["value"] = out["photo_or_art"]
            updates[ui["photo_or_art"]] = gr.update(**field)
        if "gallery" in out:
            updates[ui["gallery"]] = gr.update(value=out["gallery"], selected_index=out.get("selected_result"))
        # Gradio reads an empty dict as one plain value; "nothing changed" must name a component.
        return updates or {ui["state"]: gr.skip()}

    return wrapper
