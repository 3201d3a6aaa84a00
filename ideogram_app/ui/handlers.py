"""Every UI event function of the app (the public API lives in `api.py`).

Event functions return a dict `{output name: value}` holding only what changed; `layout.py` maps
names to components. They call the caption core, the editor and the pipeline and format the
result; they hold no caption logic of their own.
"""
from __future__ import annotations

import copy
import json
import tempfile
import uuid
from pathlib import Path

import gradio as gr
from PIL import Image

from ideogram_app.caption import (CaptionFormatError, CaptionSyntaxError, PlainText, list_templates, load_template,
                                  parse, render_layout as draw_layout, to_json)
from ideogram_app.pipeline.metadata import NoImageMetadataError, read_image_metadata
from ideogram_app.pipeline.pipeline import GenerationCancelled
from ideogram_app.pipeline.sizes import ASPECT_PRESETS, SizeError, check_size

from . import editor, views
from .editor import CanvasOpError
from .generation import (PRESET_LABELS, StopSignals, check_prompt, check_settings, output_dir, resolve_seed,
                         run_generation, save_results)
from .model_slot import VARIANTS, WEIGHT_FAMILY, ModelNotLoadedError, ModelSlot
from .state import EditorState

PRESET_BY_NAME = {name: label for label, name in PRESET_LABELS.items()}
CUSTOM_SIZE = "custom"


def prompt_text(state: EditorState) -> str:
    """The string Generate sends: plain text as typed, otherwise the canonical caption JSON."""
    return state.plain_text if state.plain_text is not None else to_json(state.caption)


def size_or_error(width, height) -> tuple[int, int]:
    """Validated (width, height) or gr.Error naming the field and the nearest valid sizes."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise gr.Error(f"{name} must be a whole number of pixels, got {value!r}")
    try:
        check_size(int(width), int(height))
    except SizeError as err:
        raise gr.Error(str(err)) from None
    return int(width), int(height)


def save_preview(image: Image.Image) -> str:
    """Store a preview/overlay PNG where the app serves files from."""
    path = output_dir() / f"layout-{uuid.uuid4().hex[:12]}.png"
    image.save(path, format="PNG")
    return str(path)


class AppHandlers:
    """Event functions bound to the process's model slot and Stop signals."""

    def __init__(self, slot: ModelSlot):
        self.slot = slot
        self.stops = StopSignals()

    # ---- view assembly ---------------------------------------------------------------------

    def editor_view(self, state: EditorState, *, fields: bool = True, json_text: bool = True,
                    status: str | None = None) -> dict:
        """Everything the compose tab derives from `state`."""
        issues = views.caption_issues(state)
        element_issues, scene_issues = views.split_issues(state, issues)
        out = {
            "state": state,
            "canvas": views.canvas_value(state, issues),
            "issues_all": views.issue_summary(issues) if state.plain_text is None else
            "Plain-text prompt: the verifier checks JSON captions only.",
            "issues_element": views.issues_markdown(element_issues),
            "issues_scene": views.issues_markdown(scene_issues),
            "tokens": views.token_label(prompt_text(state), self.slot.token_counter()),
        }
        if json_text:
            out["json"] = views.json_text(state)
        if status is not None:
            out["json_status"] = status
        if fields:
            out.update(views.inspector_values(state))
            out.update(views.scene_values(state))
        return out

    def on_page_load(self, state: EditorState) -> dict:
        return {**self.editor_view(state), "model_status": self.slot.status()}

    # ---- compose: canvas and JSON ----------------------------------------------------------

    def on_canvas_edit(self, state: EditorState, evt: gr.EventData) -> dict:
        try:
            new = editor.apply_canvas_op(state, evt._data)
        except CanvasOpError as err:
            gr.Warning(str(err))
            return {}
        return self.editor_view(new, status="")

    def on_json_input(self, state: EditorState, text: str) -> dict:
        result = editor.ingest_json(state, text)
        if not result.accepted:
            return {"json_status": result.status + ("\n\n" + views.issues_markdown(result.issues)
                                                    if result.issues else "")}
        if result.state is state:
            return {}
        return self.editor_view(result.state, json_text=False, status=result.status)

    # ---- compose: inspector and scene fields -----------------------------------------------

    def on_element_field(self, field: str):
        def handler(state: EditorState, value) -> dict:
            try:
                new = editor.set_element_field(state, field, value)
            except ValueError as err:
                gr.Warning(str(err))
                return {}
            if new is state:
                return {}
            return self.editor_view(new, fields=field in ("type", "has_box"))
        handler.__name__ = f"on_element_{field}"
        return handler

    def on_element_palette(self, state: EditorState, count, *colors: str) -> dict:
        new = editor.set_element_field(state, "palette", editor.palette_from_pickers(count, list(colors)))
        out = self.editor_view(new, fields=False)
        out["el_palette_count"] = len((new.selected_element() or {}).get("color_palette") or [])
        out["el_palette"] = views.inspector_values(new)["el_palette"]
        return out

    def on_add_element(self, kind: str):
        def handler(state: EditorState) -> dict:
            return self.editor_view(editor.add_element(state, kind))
        handler.__name__ = f"on_add_{kind}"
        return handler

    def on_high_level_description(self, state: EditorState, text: str) -> dict:
        new = editor.set_high_level_description(state, text)
        return {} if new is state else self.editor_view(new, fields=False)

    def on_background_text(self, state: EditorState, text: str) -> dict:
        new = editor.set_background(state, text)
        return {} if new is state else self.editor_view(new, fields=False)

    def on_style_kind(self, state: EditorState, kind: str) -> dict:
        new = editor.set_style_kind(state, kind)
        return {} if new is state else self.editor_view(new)

    def on_style_field(self, field: str):
        def handler(state: EditorState, value) -> dict:
            new = editor.set_style_field(state, field, value)
            return {} if new is state else self.editor_view(new, fields=False)
        handler.__name__ = f"on_style_{field}"
        return handler

    def on_style_palette(self, state: EditorState, count, *colors: str) -> dict:
        new = editor.set_style_field(state, "palette", editor.palette_from_pickers(count, list(colors)))
        if new is state:
            return {}
        scene = views.scene_values(new)
        return {**self.editor_view(new, fields=False), "palette": scene["palette"],
                "palette_count": scene["palette_count"]}

    def on_undo(self, state: EditorState) -> dict:
        return self.editor_view(editor.apply_canvas_op(state, {"op": "undo"}))

    def on_redo(self, state: EditorState) -> dict:
        return self.editor_view(editor.apply_canvas_op(state, {"op": "redo"}))

    # ---- compose: templates, files, size, background ---------------------------------------

    def on_load_template(self, state: EditorState, name: str) -> dict:
        if name not in list_templates():
            gr.Warning(f"pick a template first (available: {', '.join(list_templates())})")
            return {}
        return self.editor_view(editor.load_caption(state, load_template(name)), status=f"Loaded template {name}.")

    def on_import_file(self, state: EditorState, path: str | None) -> dict:
        """A caption file (.json/.txt) or a PNG made by this app."""
        if not path:
            return {}
        if Path(path).suffix.lower() in (".png", ".webp", ".jpg", ".jpeg"):
            return self.on_open_png(state, path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            gr.Warning(f"cannot read {Path(path).name}: {err}")
            return {}
        result = editor.ingest_json(state, text)
        if not result.accepted:
            gr.Warning(f"{Path(path).name}: {result.status}")
            return {"json_status": f"{Path(path).name}: {result.status}\n\n" + views.issues_markdown(result.issues)}
        return self.editor_view(result.state, status=f"Imported {Path(path).name}.")

    def on_export(self, state: EditorState) -> dict:
        """The caption as a canonical .json file (or .txt for plain text) for download."""
        directory = Path(tempfile.mkdtemp(prefix="ideogram-caption-"))
        if state.plain_text is not None:
            path = directory / "prompt.txt"
            path.write_text(state.plain_text, encoding="utf-8")
        else:
            path = directory / "caption.json"
            path.write_text(to_json(state.caption), encoding="utf-8")
        return gr.update(value=str(path), visible=True)

    def on_aspect_preset(self, state: EditorState, label: str) -> dict:
        if label not in ASPECT_PRESETS:
            return {}
        width, height = ASPECT_PRESETS[label]
        return self._resize(state, width, height)

    def on_custom_size(self, side: str):
        """Width or height typed by the user; one side per event (see editor.set_style_field)."""
        def handler(state: EditorState, value) -> dict:
            width, height = (value, state.height) if side == "width" else (state.width, value)
            try:
                width, height = size_or_error(width, height)
            except gr.Error as err:
                return {"size_note": f"**Invalid size:** {err.message}"}
            if (width, height) == (state.width, state.height):
                return {}
            return self._resize(state, width, height, custom=True)
        handler.__name__ = f"on_custom_{side}"
        return handler

    def _resize(self, state: EditorState, width: int, height: int, custom: bool = False) -> dict:
        new = copy.deepcopy(state)
        new.width, new.height = width, height
        notes = check_size(width, height)
        out = {"state": new, "canvas": views.canvas_value(new), "width": width, "height": height,
               "size_note": " · ".join(f"**Note:** {n}" for n in notes) or f"{width} × {height} px"}
        if custom:
            out["aspect"] = CUSTOM_SIZE
        return out

    def on_canvas_background(self, state: EditorState, image_path: str | None, opacity: float) -> dict:
        new = copy.deepcopy(state)
        new.background_image = image_path or None
        new.background_opacity = float(opacity)
        return {"state": new, "canvas": views.canvas_value(new)}

    def on_use_last_result(self, state: EditorState, results: list[dict], opacity: float) -> dict:
        if not results:
            gr.Warning("no result yet: generate an image first")
            return {}
        return self.on_canvas_background(state, results[-1]["path"], opacity)

    # ---- generate ----------------------------------------------------------------------------

    def on_generate(self, state: EditorState, results: list[dict], preset: str, width, height, seed, randomize: bool,
                    num_images, input_image: str | None, strength, request: gr.Request,
                    progress=gr.Progress()) -> dict:
        """Run the pipeline for this session's caption; results join this session's gallery."""
        try:
            self.slot.require()  # the most basic thing missing is said first
            settings, warnings = check_settings(preset, width, height, resolve_seed(seed, randomize), num_images,
                                                input_image, strength)
            prompt = check_prompt(prompt_text(state), self.slot.token_counter())
        except (ValueError, ModelNotLoadedError) as err:  # settings, caption, size, token count
            raise gr.Error(str(err), duration=None) from None
        for warning in warnings:
            gr.Warning(warning)
        session = request.session_hash if request is not None else "local"
        stop_event = self.stops.start(session)
        steps_total = {"n": 0}

        def on_step(step: int, total: int) -> None:
            steps_total["n"] = step
            progress((step, total), desc=f"denoising step {step}/{total}", unit="steps")

        progress(0, desc="encoding the prompt")
        try:
            images = run_generation(self.slot, prompt, settings, on_step=on_step, stop_event=stop_event)
        except GenerationCancelled:
            return {"gen_status": f"Stopped after step {steps_total['n']}; nothing was saved.", "seed": settings.seed}
        except (ValueError, ModelNotLoadedError) as err:
            raise gr.Error(str(err), duration=None) from None
        finally:
            self.stops.finish(session)
        new_results = list(results) + save_results(images)
        return {"results": new_results, "gallery": self.gallery_items(new_results), "seed": settings.seed,
                "gen_status": f"Done: {len(images)} image(s), seed {settings.seed}, {settings.width}×{settings.height}, "
                              f"{settings.preset}.", "result_settings": self.result_details(new_results[-1]),
                "selected_result": len(new_results) - 1,
                "overlay": self._overlay(new_results[-1])}

    @staticmethod
    def gallery_items(results: list[dict]) -> list[tuple[str, str]]:
        return [(r["path"], f"seed {r['settings']['seed']} · {r['settings']['preset']} · "
                            f"{r['settings']['width']}×{r['settings']['height']}") for r in results]

    @staticmethod
    def result_details(result: dict) -> dict:
        """What the gallery shows next to a result: its prompt (as JSON when it is a caption) and settings."""
        try:
            prompt = json.loads(result["prompt"])
        except json.JSONDecodeError:
            prompt = result["prompt"]
        return {"prompt": prompt, "settings": result["settings"]}

    def on_stop(self, request: gr.Request) -> dict:
        """Signal this session's run. Only toasts here: the run's own handler writes the final status,
        and a status written by Stop could arrive after it."""
        if self.stops.stop(request.session_hash if request is not None else "local"):
            gr.Info("Stopping after the current step…")
        else:
            gr.Warning("Nothing is running.")
        return {}

    @staticmethod
    def _overlay(result: dict) -> str | None:
        """The caption's boxes drawn over a result (made once, next to the result)."""
        path = Path(result["path"])
        overlay = path.with_name(path.stem + "-overlay.png")
        if overlay.exists():
            return str(overlay)
        try:
            caption = parse(result["prompt"])
        except (CaptionSyntaxError, CaptionFormatError):
            return None
        if isinstance(caption, PlainText):
            return None
        image = Image.open(path)
        draw_layout(caption, image.width, image.height, image=image).save(overlay, format="PNG")
        return str(overlay)

    def on_result_select(self, results: list[dict], evt: gr.SelectData) -> dict:
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not 0 <= index < len(results):
            return {}
        return {"selected_result": index, "result_settings": self.result_details(results[index]),
                "overlay": self._overlay(results[index])}

    def on_open_result(self, state: EditorState, results: list[dict], selected: int | None) -> dict:
        if selected is None or not 0 <= selected < len(results):
            gr.Warning("select a result in the gallery first")
            return {}
        return self._open_record(state, {"prompt": results[selected]["prompt"],
                                         "settings": results[selected]["settings"]}, "the selected result")

    def on_open_png(self, state: EditorState, path: str | None) -> dict:
        if not path:
            return {}
        try:
            record = read_image_metadata(path)
        except NoImageMetadataError as err:
            gr.Warning(str(err))
            return {"json_status": f"**Cannot open:** {err}"}
        return self._open_record(state, record, Path(path).name)

    def _open_record(self, state: EditorState, record: dict, where: str) -> dict:
        """Restore caption and generation settings from a result record / PNG metadata."""
        result = editor.ingest_json(state, record["prompt"])
        if not result.accepted:
            gr.Warning(f"{where}: {result.status}")
            return {}
        new = result.state
        settings = record.get("settings", {})
        width, height = settings.get("width", new.width), settings.get("height", new.height)
        if isinstance(width, int) and isinstance(height, int):
            new.width, new.height = width, height
        out = self.editor_view(new, status=f"Opened {where} in the editor.")
        if settings.get("preset") in PRESET_BY_NAME:
            out["preset"] = PRESET_BY_NAME[settings["preset"]]
        if isinstance(settings.get("seed"), int):
            out["seed"] = settings["seed"]
            out["randomize"] = False
        out.update({"width": new.width, "height": new.height, "aspect": CUSTOM_SIZE})
        return out

    # ---- model panel -----------------------------------------------------------------------

    def on_variant(self, variant: str) -> dict:
        return {"model_source": VARIANTS.get(variant, "")}

    def on_estimate(self, variant: str, source: str, memory: str, width, height) -> dict:
        from ideogram_app.pipeline.memory import KNOWN_WEIGHTS, estimate_memory, weight_bytes_from_files

        try:
            if source and Path(source).expanduser().is_dir():
                weights = weight_bytes_from_files(Path(source).expanduser())
            else:
                weights = KNOWN_WEIGHTS[WEIGHT_FAMILY.get(variant, "fp8")]
            w, h = size_or_error(width, height)
            estimate = estimate_memory(weights, memory, height=h, width=w)
        except (gr.Error, ValueError, OSError) as err:
            return {"model_estimate": f"Cannot estimate: {getattr(err, 'message', err)}"}
        return {"model_estimate": f"Needs {estimate.describe()} for one {w}×{h} image in `{memory}` mode."}

    def on_load_model(self, source: str, memory: str, progress=gr.Progress(track_tqdm=True)) -> dict:
        progress(0, desc=f"loading {source}")
        try:
            self.slot.load(source, memory)
        except Exception as err:
            raise gr.Error(f"Could not load {source!r}: {err}", duration=None) from None
        return {"model_status": self.slot.status()}

    def on_unload_model(self) -> dict:
        self.slot.unload()
        return {"model_status": self.slot.status()}

    def on_refresh_tokens(self, state: EditorState) -> dict:
        return {"tokens": views.token_label(prompt_text(state), self.slot.token_counter())}
