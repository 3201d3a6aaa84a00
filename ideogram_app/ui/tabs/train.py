"""The "Train" tab: a dataset captioned with the layout editor, LoRA runs started, watched, stopped,
resumed and used in Generate.

The files and processes are runs.py's (no Gradio there); this module lays out the controls and
translates between them and those functions. Training writes server files and takes the GPU, so
it is an operator's action (policy.py): the page-load event enables the controls for operators
only, and every handler that reads or writes the training folders asks the policy again with its
`gr.Request`, because the page's private events can be called by index by anyone who has the page.

Captioning reuses the Compose tab's editor (editor.py: the same pure edits on an `EditorState`,
the same `LayoutCanvas`): the selected image is the canvas background at its own aspect, and Save
writes the caption as the image's canonical sidecar, which is exactly what the trainer reads.

The run settings are the trainer's own SETTINGS: the main controls fill the common ones, the
"Advanced" accordion has one field per remaining flag, and `config_from_values` checks them all
before a process starts (its messages name the flag). A `gr.Timer` polls the selected run:
metrics.jsonl is read from where the last poll stopped (runs.read_new_metrics), so a poll costs
the new lines only.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from ideogram_app.caption import CaptionFormatError, CaptionSyntaxError
from ideogram_app.limits import DEFAULT_LIMITS, LimitError, Limits
from ideogram_app.train.config import SETTINGS, ConfigError
from ideogram_app.train.data import bucket_size

from .. import editor, runs, views
from ..canvas import LayoutCanvas
from ..loras import MAX_LORAS, PICKER, SCALE_MAX, SCALE_MIN, add_lora_file, checked_scale, model_targets
from ..editor import CanvasOpError, prompt_text
from ..markup import code, escape
from ..model_slot import ModelSlot
from ..policy import TRAIN, NotAllowedError, Policy
from ..runs import RunManager, TrainFilesError
from ..state import EditorState
from ..uploads import upload_name
from ..wiring import GLUE, Components, emits, inform, warn
from .compose import LORA_SCALES, ComposeTab

PRESETS: dict[str, dict[str, Any]] = {
    "style LoRA": {"lora_rank": 32, "lora_alpha": 32, "learning_rate": 1e-4, "max_steps": 2000,
                   "max_pixels": 1024 * 1024, "batch_size": 1, "use_gradient_checkpointing": True},
    "subject LoRA": {"lora_rank": 16, "lora_alpha": 16, "learning_rate": 1e-4, "max_steps": 1200,
                     "max_pixels": 1024 * 1024, "batch_size": 1, "use_gradient_checkpointing": True},
    "quick test": {"lora_rank": 4, "lora_alpha": 4, "learning_rate": 1e-3, "max_steps": 20,
                   "max_pixels": 512 * 512, "batch_size": 1, "use_gradient_checkpointing": False},
}
# The main controls: (component name, setting, label). Every other setting is in "Advanced".
MAIN = (("tr_rank", "lora_rank", "Rank"), ("tr_alpha", "lora_alpha", "Alpha"),
        ("tr_lr", "learning_rate", "Learning rate"), ("tr_steps", "max_steps", "Steps"),
        ("tr_max_pixels", "max_pixels", "Max pixels per image"), ("tr_batch", "batch_size", "Batch size"),
        ("tr_gc", "use_gradient_checkpointing", "Gradient checkpointing"))
# Set by the tab itself (the dataset, the run folder, Resume, LoRA training) or by named controls.
OWN_SETTINGS = {"dataset_base_path", "output_path", "resume", "lora_base_model", "model", "fp8_models", "trigger",
                "trigger_field", "validation_prompts", *(setting for _, setting, _ in MAIN)}
# Flags that name server files: only the machine's own user (the local default) may set them.
PATH_SETTINGS = ("dataset_metadata_path", "model_paths", "model_id_with_origin_paths", "tokenizer_path",
                 "lora_checkpoint", "preset_lora_path", "cache_dir")
ADVANCED = tuple(s for s in SETTINGS if s.kind in ("value", "flag") and s.name not in OWN_SETTINGS)
TRIGGER_FIELDS = ("high_level_description", "compositional_deconstruction.background")
STATUS_LABEL = {runs.MISSING: "missing", runs.PLAIN: "plain text", runs.ERRORS: "verifier errors", runs.CLEAN: "clean"}
PLOT_POINTS = 2000  # the loss plot keeps the newest points
CONTROLS = ("tr_upload", "tr_create", "tr_datasets", "tr_open", "tr_save", "tr_copy_all", "tr_start", "tr_stop",
            "tr_resume", "tr_delete", "tr_runs", "tr_use", "tr_use_ckpt", "tr_use_scale", "tr_download",
            "tr_download_diffusers")
EDIT_VIEW = ("tr_editor", "tr_canvas", "tr_json", "tr_caption_note", "tr_el_text", "tr_el_desc", "tr_hld",
             "tr_background")
DATASET_VIEW = ("tr_dataset", "tr_images", "tr_grid", "tr_dataset_note", "tr_val_prompts", "tr_datasets")
WATCH_VIEW = ("tr_runs", "tr_runs_table", "tr_command", "tr_progress", "tr_plot", "tr_rate", "tr_val_gallery",
              "tr_log", "tr_timer", "tr_cursor", "tr_use_ckpt")
# What the estimate line reads: the MAIN controls, the base variant and the offload flag.
OFFLOAD = "use_gradient_checkpointing_offload"
RUN_COLUMNS = ["run", "status", "steps", "final loss", "LoRA", "message"]


def _advanced_name(setting_name: str) -> str:
    return f"tr_flag_{setting_name}"


class TrainTab:
    def __init__(self, slot: ModelSlot, limits: Limits = DEFAULT_LIMITS, policy: Policy = Policy(),
                 manager: RunManager | None = None, dataset_roots: tuple[Path, ...] = (), gpu_count: int | None = None):
        self.slot = slot
        self.limits = limits
        self.policy = policy
        self.manager = manager or RunManager()
        self.dataset_roots = dataset_roots
        self.generate_picker = False
        self.gpu = runs.detected_gpu()  # once: the estimate line is for the machine the app runs on
        # the GPU ids a run may be given (detected once; tests inject a count), checked again on Start
        self.gpu_count = runs.gpu_count() if gpu_count is None else gpu_count

    # ---- layout and wiring -------------------------------------------------------------------

    def build(self, ui: Components) -> None:
        """Create the tab inside the current gr.Tab and wire it. Built after Compose, so "Use in
        Generate" can select the LoRA in Generate's picker (`lora_pick`) when that tab has one."""
        self.generate_picker = "lora_pick" in ui
        ui.add("tr_policy", gr.Markdown(elem_id="train-policy"))
        ui.add("tr_dataset", gr.State(None))
        ui.add("tr_images", gr.State([]))
        ui.add("tr_image", gr.State(None))
        ui.add("tr_editor", gr.State(EditorState()))
        ui.add("tr_cursor", gr.State(None))
        gr.Markdown("## 1. Dataset")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                ui.add("tr_upload", gr.File(label="Images, captions (.json/.txt), DiffSynth metadata (.csv/.jsonl/.json) "
                                                  "or a .zip of them", file_count="multiple",
                                            type="filepath", interactive=False, elem_id="train-upload",
                                            file_types=["image", ".zip", ".json", ".txt", ".csv", ".jsonl"]))
                with gr.Row():
                    ui.add("tr_dataset_name", gr.Textbox(label="New dataset name (optional)", scale=2))
                    ui.add("tr_create", gr.Button("New dataset from the upload", interactive=False, scale=1,
                                                  elem_id="train-create"))
                with gr.Row():
                    ui.add("tr_datasets", gr.Dropdown([], value=None, label="Or open a dataset", interactive=False,
                                                      scale=2))
                    ui.add("tr_open", gr.Button("Open", interactive=False, scale=1))
            with gr.Column(scale=3):
                ui.add("tr_grid", gr.Gallery(label="Images (select one to caption it)", columns=6, height=260,
                                             allow_preview=False, elem_id="train-grid"))
                ui.add("tr_dataset_note", gr.Markdown(elem_id="train-dataset-note"))
        gr.Markdown("## 2. Caption the selected image")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                ui.add("tr_canvas", LayoutCanvas(elem_id="train-canvas"))
            with gr.Column(scale=2):
                ui.add("tr_el_text", gr.Textbox(label="Selected element: literal text", lines=2, elem_id="train-el-text"))
                ui.add("tr_el_desc", gr.Textbox(label="Selected element: description", lines=2, elem_id="train-el-desc"))
                ui.add("tr_hld", gr.Textbox(label="High-level description", lines=2, elem_id="train-hld"))
                ui.add("tr_background", gr.Textbox(label="Background", lines=2, elem_id="train-background"))
                ui.add("tr_json", gr.Textbox(label="Caption JSON", lines=8, max_lines=16, elem_id="train-json"))
                ui.add("tr_caption_note", gr.Markdown(elem_id="train-caption-note"))
                with gr.Row():
                    ui.add("tr_save", gr.Button("Save caption", variant="primary", interactive=False,
                                                elem_id="train-save"))
                    ui.add("tr_copy_all", gr.Button("Copy this caption to all images", interactive=False,
                                                    elem_id="train-copy-all"))
        gr.Markdown("## 3. Run")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                ui.add("tr_preset", gr.Radio(list(PRESETS), value="quick test", label="Preset"))
                with gr.Row():
                    ui.add("tr_run_name", gr.Textbox(label="Run name (optional)", elem_id="train-run-name"))
                    ui.add("tr_model", gr.Textbox(label="Base model (repo id or folder)", elem_id="train-model"))
                with gr.Row():
                    for name, setting, label in MAIN:
                        value = PRESETS["quick test"][setting]
                        component = gr.Checkbox(value, label=label) if isinstance(value, bool) else \
                            gr.Number(value, label=label, elem_id=name.replace("_", "-"))
                        ui.add(name, component)
                with gr.Row():
                    ui.add("tr_base", gr.Radio(list(runs.BASE_VARIANTS), value="bf16", elem_id="train-base",
                                               label="Base variant (fp8: --fp8_models dit; nf4: an NF4 checkpoint, CUDA)"))
                    if self.gpu_count:
                        ui.add("tr_gpus", gr.CheckboxGroup([(f"GPU {i}", str(i)) for i in range(self.gpu_count)],
                                                           value=["0"], label="GPUs (two or more: accelerate launch)",
                                                           elem_id="train-gpus"))
                    else:
                        ui.add("tr_gpus", gr.CheckboxGroup(["CPU"], value=["CPU"], label="GPUs", interactive=False,
                                                           elem_id="train-gpus"))
                    ui.add("tr_trigger", gr.Textbox(label="Trigger word (optional)", elem_id="train-trigger"))
                    ui.add("tr_trigger_field", gr.Dropdown(list(TRIGGER_FIELDS), value=TRIGGER_FIELDS[0],
                                                           allow_custom_value=True, label="Trigger goes in front of"))
                ui.add("tr_val_prompts", gr.Textbox(label="Validation prompts (JSON lines; empty: none)", lines=3,
                                                    elem_id="train-val-prompts"))
                with gr.Accordion("Advanced: every other trainer flag (empty = the trainer's default)", open=False):
                    for setting in ADVANCED:
                        label = setting.flag + (" (server paths: local default only)" if setting.name in PATH_SETTINGS else "")
                        if setting.kind == "flag":
                            component = gr.Checkbox(False, label=label, info=setting.help)
                        elif setting.choices:
                            component = gr.Dropdown([str(c) for c in setting.choices], value=str(setting.default),
                                                    label=label, info=setting.help)
                        else:
                            component = gr.Textbox("", label=label, info=setting.help,
                                                   placeholder="" if setting.default is None else str(setting.default))
                        ui.add(_advanced_name(setting.name), component)
                ui.add("tr_estimate", gr.Markdown(elem_id="train-estimate"))
                with gr.Row():
                    ui.add("tr_start", gr.Button("Start", variant="primary", interactive=False, elem_id="train-start"))
                    ui.add("tr_stop", gr.Button("Stop", variant="stop", interactive=False, elem_id="train-stop"))
                    ui.add("tr_resume", gr.Button("Resume", interactive=False, elem_id="train-resume"))
                    ui.add("tr_delete", gr.Button("Delete", interactive=False, elem_id="train-delete"))
            with gr.Column(scale=3):
                ui.add("tr_runs", gr.Dropdown([], value=None, label="Runs", interactive=False, elem_id="train-runs"))
                ui.add("tr_runs_table", gr.Dataframe(headers=RUN_COLUMNS, interactive=False, elem_id="train-runs-table"))
                ui.add("tr_command", gr.Textbox(label="Command line", buttons=["copy"], interactive=False,
                                                elem_id="train-command"))
                ui.add("tr_progress", gr.Markdown(elem_id="train-progress"))
                ui.add("tr_plot", gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss",
                                              title="Training loss", elem_id="train-plot", height=240))
                ui.add("tr_rate", gr.Markdown(elem_id="train-rate"))
                ui.add("tr_val_gallery", gr.Gallery(label="Validation images", columns=4, height=200,
                                                    elem_id="train-validation"))
                ui.add("tr_log", gr.Textbox(label="Log (tail)", lines=8, max_lines=8, interactive=False,
                                            autoscroll=True, elem_id="train-log"))
                with gr.Row():
                    ui.add("tr_use_ckpt", gr.Dropdown([], value=None, label="LoRA to use (final or a checkpoint)",
                                                      interactive=False, elem_id="train-use-ckpt"))
                    ui.add("tr_use_scale", gr.Slider(SCALE_MIN, SCALE_MAX, value=1.0, step=0.05, label="Scale in Generate",
                                                     interactive=False, elem_id="train-use-scale"))
                with gr.Row():
                    ui.add("tr_use", gr.Button("Use in Generate", interactive=False, visible=self.generate_picker,
                                               elem_id="train-use"))
                    ui.add("tr_download", gr.Button("Download LoRA", interactive=False, elem_id="train-download"))
                    ui.add("tr_download_diffusers", gr.Button("Download diffusers export", interactive=False,
                                                              elem_id="train-download-diffusers"))
                ui.add("tr_download_file", gr.File(label="Download", interactive=False, elem_id="train-download-file"))
                ui.add("tr_use_note", gr.Markdown(elem_id="train-use-note"))
        ui.add("tr_timer", gr.Timer(1.0, active=False))
        self._wire(ui)

    def _wire(self, ui: Components) -> None:
        private = dict(api_visibility="private")
        ui.on(ui.demo.load, self.on_page_load, [], **private, show_progress="hidden")
        ui.on(ui["tr_create"].click, self.on_create_dataset, ["tr_upload", "tr_dataset_name"], **private,
              concurrency_id="train-files", concurrency_limit=1)
        ui.on(ui["tr_open"].click, self.on_open_dataset, ["tr_datasets"], **private)
        ui.on(ui["tr_grid"].select, self.on_grid_select, ["tr_dataset", "tr_images"], **private)
        ui.on(ui["tr_canvas"].edit, self.on_canvas_edit, ["tr_editor"], trigger_mode="multiple", **GLUE)
        # As in Compose: key presses fire `input`, pasted text only `blur`; the newest value wins.
        for name, handler in (("tr_el_text", self.on_element_text), ("tr_el_desc", self.on_element_desc),
                              ("tr_hld", self.on_hld), ("tr_background", self.on_background), ("tr_json", self.on_json)):
            ui.on([ui[name].input, ui[name].blur], handler, ["tr_editor", name], trigger_mode="always_last", **GLUE)
        ui.on(ui["tr_save"].click, self.on_save_caption, ["tr_dataset", "tr_image", "tr_editor"], **private,
              concurrency_id="train-files", concurrency_limit=1)
        ui.on(ui["tr_copy_all"].click, self.on_copy_to_all, ["tr_dataset", "tr_image", "tr_editor"], **private,
              concurrency_id="train-files", concurrency_limit=1)
        ui.on(ui["tr_preset"].input, self.on_preset, ["tr_preset"], **GLUE)
        run_inputs = ["tr_dataset", "tr_run_name", "tr_model", *(name for name, _, _ in MAIN), "tr_base", "tr_gpus",
                      "tr_trigger",
                      "tr_trigger_field", "tr_val_prompts", *(_advanced_name(s.name) for s in ADVANCED)]
        ui.on(ui["tr_start"].click, self.on_start_run, run_inputs, **private, concurrency_id="train-files",
              concurrency_limit=1)
        ui.on(ui["tr_stop"].click, self.on_stop_run, ["tr_runs"], **private)
        ui.on(ui["tr_resume"].click, self.on_resume_run, ["tr_runs"], **private, concurrency_id="train-files",
              concurrency_limit=1)
        ui.on(ui["tr_delete"].click, self.on_delete_run, ["tr_runs"], **private, concurrency_id="train-files",
              concurrency_limit=1)
        ui.on(ui["tr_runs"].input, self.on_run_select, ["tr_runs"], **private)
        ui.on(ui["tr_timer"].tick, self.on_watch_tick, ["tr_runs", "tr_cursor"], api_visibility="private",
              show_progress="hidden", concurrency_id="train-watch", concurrency_limit=8)
        if self.generate_picker:
            ui.on(ui["tr_use"].click, self.on_use_in_generate,
                  ["tr_runs", "tr_use_ckpt", "tr_use_scale", PICKER, "lora_shown", *LORA_SCALES], **private)
        ui.on(ui["tr_download"].click, self.on_download_lora, ["tr_runs", "tr_use_ckpt"], **private)
        ui.on(ui["tr_download_diffusers"].click, self.on_download_diffusers, ["tr_runs", "tr_use_ckpt"], **private)
        estimate_inputs = [*(name for name, _, _ in MAIN), "tr_base", _advanced_name(OFFLOAD)]
        ui.on([ui[name].change for name in estimate_inputs], self.on_estimate, estimate_inputs, **GLUE)

    # ---- policy ------------------------------------------------------------------------------

    def _owner(self, request: gr.Request | None) -> str:
        """The caller's folder owner, or gr.Error when the policy does not let them train."""
        try:
            self.policy.require(request, TRAIN)
        except NotAllowedError as err:
            raise gr.Error(str(err), duration=None) from None
        return runs.owner_of(getattr(request, "username", None))

    @emits("tr_policy", "tr_model", "tr_datasets", "tr_runs", "tr_runs_table", "tr_estimate", *CONTROLS)
    def on_page_load(self, request: gr.Request) -> dict:
        if self.policy.refusal(request, TRAIN) is not None:
            return {"tr_policy": f"**Training is not available to you.** {escape(self.policy.refusal(request, TRAIN))}",
                    **{name: gr.update(interactive=False) for name in CONTROLS}}
        owner = runs.owner_of(getattr(request, "username", None))
        loaded = self.slot.loaded
        listed = self._runs_list(owner)  # after the controls' updates, so the runs' choices are kept
        listed["tr_runs"]["interactive"] = True
        return {"tr_policy": "Upload images, caption them on the canvas, then start a LoRA run. Runs are kept in "
                             "your training folder and listed again after a restart.",
                "tr_model": loaded.source if loaded else "",
                "tr_datasets": gr.update(choices=runs.list_datasets(owner, self.dataset_roots), interactive=True),
                "tr_estimate": self.on_estimate(*(PRESETS["quick test"][s] for _, s, _ in MAIN), False,
                                                False)["tr_estimate"],
                **{name: gr.update(interactive=True) for name in CONTROLS}, **listed}

    # ---- dataset -----------------------------------------------------------------------------

    def _dataset_view(self, owner: str, folder: Path, note: str = "") -> dict:
        images = runs.dataset_images(folder)
        items, counts = [], {}
        for image in images:
            status = runs.caption_status(image)
            counts[status.status] = counts.get(status.status, 0) + 1
            try:
                items.append((runs.thumbnail(image), f"{image.name} · {STATUS_LABEL[status.status]}"))
            except (OSError, Image.DecompressionBombError):
                items.append((None, f"{image.name} · cannot be read"))
        summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no images"
        return {"tr_dataset": str(folder), "tr_images": [str(p) for p in images],
                "tr_grid": [item for item in items if item[0] is not None],
                "tr_dataset_note": escape(f"{note}Dataset {folder.name}: {len(images)} images ({summary}).") +
                (" Select an image to caption it." if images else ""),
                "tr_val_prompts": default_validation_prompts(images),
                "tr_datasets": gr.update(choices=runs.list_datasets(owner, self.dataset_roots),
                                         value=str(folder))}

    @emits(*DATASET_VIEW)
    def on_create_dataset(self, files: list[str] | None, name: str, request: gr.Request) -> dict:
        owner = self._owner(request)
        if not files:
            raise gr.Error("Choose images (or a .zip of them) to upload first.")
        try:
            folder = runs.create_dataset(owner, name or None, [(upload_name(p), Path(p)) for p in files], self.limits)
        except (TrainFilesError, LimitError, OSError) as err:
            raise gr.Error(f"Dataset not created: {err}", duration=None) from None
        return self._dataset_view(owner, folder, "Created. ")

    @emits(*DATASET_VIEW)
    def on_open_dataset(self, choice: str | None, request: gr.Request) -> dict:
        owner = self._owner(request)
        try:
            folder = runs.resolve_dataset(owner, choice or "", self.dataset_roots)
        except TrainFilesError as err:
            raise gr.Error(str(err)) from None
        return self._dataset_view(owner, folder)

    def _image(self, owner: str, dataset: str | None, image: str | None) -> tuple[Path, Path]:
        """The dataset folder and image a session holds, checked against the caller's datasets."""
        if not dataset or not image:
            raise gr.Error("Open a dataset and select an image first.")
        try:
            folder = runs.resolve_dataset(owner, dataset, self.dataset_roots)
        except TrainFilesError as err:
            raise gr.Error(str(err)) from None
        path = Path(image)
        if path not in runs.dataset_images(folder):
            raise gr.Error(f"{path.name} is not in dataset {folder.name} any more; open the dataset again.")
        return folder, path

    @emits("tr_image", *EDIT_VIEW)
    def on_grid_select(self, dataset: str | None, images: list[str], evt: gr.SelectData, request: gr.Request) -> dict:
        owner = self._owner(request)
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) and evt.index else evt.index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(images):
            return {}
        folder, image = self._image(owner, dataset, images[index])
        return {"tr_image": str(image), **self.edit_view(load_image_caption(image), f"Captioning {image.name}.")}

    # ---- caption editing ---------------------------------------------------------------------

    def edit_view(self, state: EditorState, note: str | None = None) -> dict:
        prompt = prompt_text(state)
        try:
            self.limits.check_caption_chars(prompt)
        except ValueError as err:
            raise gr.Error(f"This edit is not applied: {err}") from None
        issues = views.caption_issues(state)
        element = state.selected_element() or {}
        caption = state.caption
        shown = views.issue_summary(issues) if state.plain_text is None else \
            "Plain-text caption: it is saved as a .txt sidecar."
        return {"tr_editor": state, "tr_canvas": views.canvas_value(state, issues), "tr_json": views.json_text(state),
                "tr_caption_note": (escape(note) + "\n\n" if note else "") + shown,
                "tr_el_text": element.get("text") or "", "tr_el_desc": element.get("desc") or "",
                "tr_hld": caption.get("high_level_description") or "",
                "tr_background": caption["compositional_deconstruction"].get("background") or ""}

    @emits(*EDIT_VIEW)
    def on_canvas_edit(self, state: EditorState, evt: gr.EventData) -> dict:
        try:
            new = editor.apply_canvas_op(state, evt._data)
        except CanvasOpError as err:
            warn(str(err))
            return {}
        return self.edit_view(new)

    def _field(self, state: EditorState, new: EditorState) -> dict:
        if new is state:
            return {}
        view = self.edit_view(new)
        # the field being typed in keeps its own text (a round trip would move the cursor)
        return {k: v for k, v in view.items() if k in ("tr_editor", "tr_canvas", "tr_json", "tr_caption_note")}

    @emits(*EDIT_VIEW)
    def on_element_text(self, state: EditorState, text: str) -> dict:
        element = state.selected_element()
        if element is None:
            warn("select or draw an element first")
            return {}
        new = editor.set_element_field(state, "type", "text") if element.get("type") != "text" else state
        return self._field(state, editor.set_element_field(new, "text", text))

    @emits(*EDIT_VIEW)
    def on_element_desc(self, state: EditorState, text: str) -> dict:
        if state.selected_element() is None:
            warn("select or draw an element first")
            return {}
        return self._field(state, editor.set_element_field(state, "desc", text))

    @emits(*EDIT_VIEW)
    def on_hld(self, state: EditorState, text: str) -> dict:
        return self._field(state, editor.set_high_level_description(state, text))

    @emits(*EDIT_VIEW)
    def on_background(self, state: EditorState, text: str) -> dict:
        return self._field(state, editor.set_background(state, text))

    @emits(*EDIT_VIEW)
    def on_json(self, state: EditorState, text: str) -> dict:
        result = editor.ingest_json(state, text)
        if not result.accepted:
            return {"tr_caption_note": escape(result.status) + ("\n\n" + views.issues_markdown(result.issues)
                                                                if result.issues else "")}
        return {} if result.state is state else self.edit_view(result.state, result.status)

    @emits("tr_grid", "tr_dataset_note", "tr_caption_note", "tr_images", "tr_dataset", "tr_val_prompts", "tr_datasets")
    def on_save_caption(self, dataset: str | None, image: str | None, state: EditorState, request: gr.Request) -> dict:
        owner = self._owner(request)
        folder, path = self._image(owner, dataset, image)
        target = self._write(path, state)
        view = self._dataset_view(owner, folder)
        status = runs.caption_status(path)
        return {**view, "tr_caption_note": escape(f"Saved {target.name} ({status.status}).")}

    @emits("tr_grid", "tr_dataset_note", "tr_caption_note", "tr_images", "tr_dataset", "tr_val_prompts", "tr_datasets")
    def on_copy_to_all(self, dataset: str | None, image: str | None, state: EditorState, request: gr.Request) -> dict:
        owner = self._owner(request)
        folder, path = self._image(owner, dataset, image)
        self._write(path, state)
        count = runs.copy_caption_to_all(folder, prompt_text(state), source=path)
        inform(f"Caption copied to {count} other image(s); select each to adjust it.")
        return {**self._dataset_view(owner, folder),
                "tr_caption_note": escape(f"Saved and copied to {count} other image(s).")}

    def _write(self, path: Path, state: EditorState) -> Path:
        prompt = prompt_text(state)
        try:
            self.limits.check_caption_chars(prompt)
            return runs.write_caption(path, prompt)
        except (CaptionSyntaxError, CaptionFormatError, ValueError) as err:
            raise gr.Error(f"Caption of {path.name} not saved: {err}", duration=None) from None

    # ---- run settings ------------------------------------------------------------------------

    @emits("tr_estimate")
    def on_estimate(self, *values: Any) -> dict:
        """The memory/time line for the MAIN controls, the base variant and offload (`values`, in that
        order)."""
        settings = {setting: value for (_, setting, _), value in zip(MAIN, values)}
        settings["fp8_models"] = "dit" if values[len(MAIN)] == "fp8" else None
        settings[OFFLOAD] = bool(values[len(MAIN) + 1])
        return {"tr_estimate": "**Estimate:** " + escape(runs.estimate_line(settings, self.gpu))}

    @emits(*(name for name, _, _ in MAIN))
    def on_preset(self, preset: str) -> dict:
        values = PRESETS.get(preset)
        if values is None:
            return {}
        return {name: values[setting] for name, setting, _ in MAIN}

    def settings_from_controls(self, dataset: str | None, owner: str, model: str, main: list[Any], base: str,
                               trigger: str, trigger_field: str, advanced: list[Any]) -> dict[str, Any]:
        """{setting: value} for the trainer from the controls (advanced fields left empty are left
        out, so the trainer's defaults apply); gr.Error for what the policy or the tab refuses."""
        if not dataset:
            raise gr.Error("Open or create a dataset first.")
        try:
            folder = runs.resolve_dataset(owner, dataset, self.dataset_roots)
            source = self.policy.resolve_source(model or "")
        except (TrainFilesError, NotAllowedError) as err:
            raise gr.Error(str(err), duration=None) from None
        values: dict[str, Any] = {"dataset_base_path": str(folder), "model": source, "lora_base_model": "dit"}
        for (_, setting, _), value in zip(MAIN, main):
            if value is not None and value != "":
                values[setting] = value
        if (trigger or "").strip():
            values["trigger"] = trigger.strip()
            values["trigger_field"] = trigger_field
        for setting, value in zip(ADVANCED, advanced):
            if setting.kind == "flag":
                if value:
                    values[setting.name] = True
                continue
            if value is None or (isinstance(value, str) and not value.strip()) or str(value) == str(setting.default):
                continue
            if setting.name in PATH_SETTINGS and not self.policy.local_operator:
                raise gr.Error(f"{setting.flag} names a file on the server, which only the machine's own user may do "
                               "(the app's local default); leave it empty.", duration=None)
            values[setting.name] = value.strip() if isinstance(value, str) else value
        try:  # after the advanced flags: nf4 refuses a full fine-tune
            return runs.apply_base_variant(values, base, cuda=self.gpu_count > 0)
        except TrainFilesError as err:
            raise gr.Error(f"Not started: {err}", duration=None) from None

    # ---- runs --------------------------------------------------------------------------------

    def _runs_list(self, owner: str, selected: str | None = None) -> dict:
        infos = self.manager.list(owner)
        rows = [[i.name, i.status, f"{i.step}/{i.total_steps or '?'}",
                 "" if i.final_loss is None else f"{i.final_loss:.4f}", i.lora.name if i.lora else "",
                 (i.message or "")[:200]] for i in infos]
        names = [i.name for i in infos]
        return {"tr_runs": gr.update(choices=names, value=selected if selected in names else None),
                "tr_runs_table": pd.DataFrame(rows, columns=RUN_COLUMNS)}

    def watch_view(self, owner: str, folder: Path, cursor: dict | None) -> dict:
        """What the watch panel shows for a run; `cursor` is the session's place in its metrics
        (None: read from the start)."""
        info = self.manager.info(folder)
        previous = cursor if isinstance(cursor, dict) and cursor.get("folder") == str(folder) else None
        position = runs.MetricsCursor(str(folder), previous["offset"], 0) if previous else runs.MetricsCursor()
        rows, position, reset = runs.read_new_metrics(folder, position)
        points = [] if reset or previous is None else list(previous["points"])
        points = (points + [[r["step"], r["loss"]] for r in rows if "step" in r and "loss" in r])[-PLOT_POINTS:]
        last = rows[-1] if rows else (previous or {}).get("last")
        out = {"tr_cursor": {"folder": str(folder), "offset": position.offset, "points": points, "last": last,
                             "status": info.status},
               "tr_progress": progress_markdown(info, last), "tr_command": info.command,
               "tr_rate": rate_markdown(last), "tr_log": self.manager.log_tail(folder),
               "tr_val_gallery": self.manager.validation_images(folder),
               "tr_timer": gr.update(active=info.alive)}
        choices = runs.lora_choices(info)
        if not previous or previous.get("choices") != choices:  # the dropdown follows new checkpoints only
            out["tr_use_ckpt"] = gr.update(choices=choices, value=choices[0] if choices else None)
        out["tr_cursor"]["choices"] = choices
        if rows or reset or previous is None:
            out["tr_plot"] = pd.DataFrame(points or [], columns=["step", "loss"])
        return out

    @emits(*WATCH_VIEW)
    def on_start_run(self, request: gr.Request, *controls: Any) -> dict:
        """`controls`: the dataset, run name and model, the MAIN controls, base variant, GPU ids,
        trigger, trigger field, validation prompts, then one value per ADVANCED setting (the request
        comes first because Gradio passes it by position, before a variable argument list). The GPU
        ids are checked against the detected count here, whatever the page offered."""
        owner = self._owner(request)
        expected = 3 + len(MAIN) + 5 + len(ADVANCED)
        if len(controls) != expected:
            raise gr.Error(f"Start takes {expected} values, got {len(controls)}")
        dataset, run_name, model = controls[:3]
        main = list(controls[3:3 + len(MAIN)])
        base, gpus, trigger, trigger_field, val_prompts = controls[3 + len(MAIN):8 + len(MAIN)]
        advanced = list(controls[8 + len(MAIN):])
        if not self.gpu_count and gpus == ["CPU"]:
            gpus = []  # the disabled control's own value
        try:
            gpus = runs.check_gpus(gpus, self.gpu_count)
        except TrainFilesError as err:
            raise gr.Error(f"Not started: {err}", duration=None) from None
        values = self.settings_from_controls(dataset, owner, model, main, base, trigger, trigger_field, advanced)
        try:
            info = self.manager.start(owner, (run_name or "").strip() or None, values, val_prompts, gpus,
                                      self.gpu_count)
        except ConfigError as err:
            raise gr.Error("Not started: " + "; ".join(f"{flag}: {message}" for flag, message in err.problems),
                           duration=None) from None
        except TrainFilesError as err:
            raise gr.Error(f"Not started: {err}", duration=None) from None
        inform(f"Run {info.name} started.")
        return {**self._runs_list(owner, info.name), **self.watch_view(owner, info.folder, None)}

    def _run(self, owner: str, name: Any) -> Path:
        try:
            return self.manager.resolve(owner, name)
        except TrainFilesError as err:
            raise gr.Error(str(err)) from None

    @emits(*WATCH_VIEW)
    def on_stop_run(self, name: str | None, request: gr.Request) -> dict:
        owner = self._owner(request)
        folder = self._run(owner, name)
        try:
            self.manager.stop(folder)
        except TrainFilesError as err:
            raise gr.Error(str(err)) from None
        inform(f"Stopping {folder.name}: it finishes its step and saves a checkpoint.")
        return {"tr_progress": f"Stopping **{escape(folder.name)}** after the current step…"}

    @emits(*WATCH_VIEW)
    def on_resume_run(self, name: str | None, request: gr.Request) -> dict:
        owner = self._owner(request)
        folder = self._run(owner, name)
        try:
            self.manager.resume(folder)
        except ConfigError as err:
            raise gr.Error("Not resumed: " + "; ".join(f"{f}: {m}" for f, m in err.problems), duration=None) from None
        except TrainFilesError as err:
            raise gr.Error(f"Not resumed: {err}", duration=None) from None
        return {**self._runs_list(owner, folder.name), **self.watch_view(owner, folder, None)}

    @emits(*WATCH_VIEW)
    def on_delete_run(self, name: str | None, request: gr.Request) -> dict:
        owner = self._owner(request)
        folder = self._run(owner, name)
        try:
            deleted = self.manager.delete(folder)
        except TrainFilesError as err:
            raise gr.Error(str(err)) from None
        inform(f"Run {deleted} deleted.")
        return {**self._runs_list(owner), "tr_command": "", "tr_progress": "", "tr_rate": "", "tr_log": "",
                "tr_val_gallery": [], "tr_plot": pd.DataFrame([], columns=["step", "loss"]),
                "tr_timer": gr.update(active=False), "tr_cursor": None}

    @emits(*WATCH_VIEW)
    def on_run_select(self, name: str | None, request: gr.Request) -> dict:
        owner = self._owner(request)
        if not name:
            return {}
        return self.watch_view(owner, self._run(owner, name), None)

    @emits(*WATCH_VIEW)
    def on_watch_tick(self, name: str | None, cursor: dict | None, request: gr.Request) -> dict:
        """The timer's poll: new metrics only; the runs table is refreshed when the status changes
        and when the run has ended (then the timer stops)."""
        if not name or self.policy.refusal(request, TRAIN) is not None:
            return {"tr_timer": gr.update(active=False)}
        owner = runs.owner_of(getattr(request, "username", None))
        try:
            folder = self.manager.resolve(owner, name)
        except TrainFilesError:
            return {"tr_timer": gr.update(active=False)}
        out = self.watch_view(owner, folder, cursor)
        before = cursor.get("status") if isinstance(cursor, dict) and cursor.get("folder") == str(folder) else None
        if out["tr_cursor"]["status"] != before or not out["tr_timer"]["active"]:
            out.update(self._runs_list(owner, name))  # the table follows status changes, not every step
        return out

    def _lora(self, request: gr.Request, name: str | None, checkpoint: str | None) -> tuple[Path, str]:
        """The chosen LoRA file of the caller's run and its name for Generate and downloads."""
        owner = self._owner(request)
        info = self.manager.info(self._run(owner, name))
        try:
            return runs.lora_source(info, checkpoint)
        except TrainFilesError as err:
            raise gr.Error(str(err)) from None

    @emits("tr_use_note", PICKER, "lora_shown", "lora_scales")
    def on_use_in_generate(self, request: gr.Request, name: str | None, checkpoint: str | None, scale: float | None,
                           selected: list[str] | None, shown: list[str] | None, *scales: float) -> dict:
        """Copy the chosen LoRA of the run (the final file, or a checkpoint's) into Generate's LoRA
        folder and select it in Generate's picker at `scale`; the LoRAs already selected there keep
        their scales (`shown` and `scales`: Generate's sliders; the request comes first, as in
        on_start_run, because Gradio passes it by position before a variable argument list)."""
        source, file_name = self._lora(request, name, checkpoint)
        scale = checked_scale(1.0 if scale is None else scale, "Scale in Generate")
        loaded = self.slot.loaded
        try:
            added = add_lora_file(source, re.sub(r"[^A-Za-z0-9_-]", "_", file_name),
                                  pipe=loaded.pipe if loaded else None)
        except Exception as err:  # noqa: BLE001 — the LoRA reader's refusals name the file
            raise gr.Error(f"Not added: {err}", duration=None) from None
        kept = [(n, float(s)) for n, s in zip(shown or [], scales) if n in (selected or []) and n != added]
        selection = (kept + [(added, scale)])[-MAX_LORAS:]
        return {"tr_use_note": f"Added {code(added)} to Generate's LoRAs and selected it there at ×{scale:g}.",
                **ComposeTab.lora_view(selection)}

    @emits("tr_download_file", "tr_use_note")
    def on_download_lora(self, name: str | None, checkpoint: str | None, request: gr.Request) -> dict:
        """The run's LoRA file as the trainer wrote it (ComfyUI layout), as a scratch copy."""
        source, file_name = self._lora(request, name, checkpoint)
        return {"tr_download_file": str(runs.native_download(source, file_name)),
                "tr_use_note": f"{code(file_name + '.safetensors')}: ComfyUI layout, as Generate loads it."}

    @emits("tr_download_file", "tr_use_note")
    def on_download_diffusers(self, name: str | None, checkpoint: str | None, request: gr.Request) -> dict:
        """The run's LoRA rewritten in diffusers' layout (split q/k/v, alpha in the PEFT config)."""
        source, file_name = self._lora(request, name, checkpoint)
        loaded = self.slot.loaded
        try:
            path = runs.diffusers_export(source, file_name, model_targets(loaded.pipe if loaded else None))
        except Exception as err:  # noqa: BLE001 — the LoRA reader's refusals name the file
            raise gr.Error(f"Not exported: {err}", duration=None) from None
        return {"tr_download_file": str(path), "tr_use_note": f"{code(path.name)}: diffusers layout."}


# ---- plain helpers ------------------------------------------------------------------------------

def load_image_caption(image: Path) -> EditorState:
    """The editor state for a dataset image: its sidecar caption (plain text kept as such; a broken
    sidecar starts empty), with the image as the canvas background at its own aspect."""
    status = runs.caption_status(image)
    state = EditorState()
    if status.text:
        try:
            state = editor.restore(status.text)
        except ValueError:
            state = EditorState()
    preview, width, height = runs.preview_copy(image)
    state = copy.deepcopy(state)
    state.width, state.height = width, height
    state.background_image, state.background_opacity = preview, 1.0
    return state


def default_validation_prompts(images: list[Path], count: int = 2) -> str:
    """JSON lines for the first `count` captioned images: their caption at their training size
    (capped at 512² so samples stay quick), which is what a LoRA should reproduce."""
    lines = []
    for image in images:
        status = runs.caption_status(image)
        if status.status not in (runs.CLEAN, runs.PLAIN) or not status.text:
            continue
        try:
            with Image.open(image) as opened:
                width, height = bucket_size(*opened.size, 512 * 512)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        prompt = json.loads(status.text) if status.status == runs.CLEAN else status.text
        lines.append(json.dumps({"prompt": prompt, "width": width, "height": height}, ensure_ascii=False))
        if len(lines) == count:
            break
    return "\n".join(lines)


def progress_markdown(info: runs.RunInfo, last: dict | None) -> str:
    head = f"**{escape(info.name)}** — {escape(info.status)}"
    total = info.total_steps
    step = (last or {}).get("step", info.step) or 0
    if total:
        done = min(1.0, step / total)
        bar = "█" * round(done * 20) + "░" * (20 - round(done * 20))
        head += f" · step {step}/{total} `{bar}` {done:.0%}"
        rate = (last or {}).get("s_per_step")
        if info.alive and rate and step < total:
            head += f" · ETA {format_seconds((total - step) * rate)}"
    if info.lora is not None:
        head += f" · LoRA {code(info.lora.name)}"
    if info.checkpoints:
        head += f" · last checkpoint {code(info.checkpoints[-1])}"
    if info.message:
        head += "\n\n" + ("**Error:** " if info.status == "failed" else "") + escape(info.message)
    return head


def rate_markdown(last: dict | None) -> str:
    if not last:
        return ""
    return (f"lr {last.get('lr', 0):.2e} · {last.get('s_per_step', 0):.3f} s/step · loss {last.get('loss', 0):.4f}"
            f" · grad norm {last.get('grad_norm', 0):.3f}")


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
