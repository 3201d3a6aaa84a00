"""Region edit in the app: pick one box of the selected result's caption (from a list, or by clicking
it on the placement overlay), change its text or description, and regenerate only that box
(docs/app.md, "Region edit"; the maths in pipeline/region.py).

The new image is a region-edit request built from the result itself: its PNG is the input image, its
metadata's prompt (with the one element changed) is the caption, so the rest of the layout stays the
model's context, and its sampler settings and LoRAs are reused; the box is the element's bbox, the
strength and seed are the panel's. The result joins the user's history like any other, with
`settings["edit_region"]` in its metadata. The input file is taken from the session's own listing of
the user's folder (history.owned_result checks it), never from a path the page sends.

`RegionEditPanel.build` lays out and wires the controls inside the current layout block; it reads the
Compose tab's "results", "selected_result" and "browser_id" and updates its gallery.
"""
from __future__ import annotations

import json
from typing import Any

import gradio as gr

from ideogram_app.caption.bbox import pixels_to_bbox
from ideogram_app.caption.rules import BBOX_GRID
from ideogram_app.pipeline.settings import SettingsError

from .generation import describe_problems
from .history import (RESULT_VIEW, NotYourResult, ResultPanel, owned_result, run_and_save, selected_record,
                      settings_from_record)
from .loras import restore_selection
from .markup import escape
from .model_slot import ModelNotLoadedError
from .results import gallery_items, owner_folder, results_dir
from .wiring import GLUE, GPU, Components, emits, warn

REGION_STRENGTH = 0.8  # the slider's start: new text in a box needs most of the noise back
LABELS = {"denoising_strength": "Region strength", "seed": "Region seed", "edit_region": "Element box",
          "input_image": "Result"}
NO_BOXES = "The selected result has no boxes to edit (a plain-text prompt, or a caption without bboxes)."


def caption_elements(prompt: Any) -> tuple[dict | None, list[tuple[str, int]]]:
    """A result's caption (its prompt as JSON) and the dropdown choices of its boxed elements,
    (label, element index); (None, []) for plain text or a prompt that is not a caption."""
    try:
        caption = json.loads(prompt) if isinstance(prompt, str) else None
    except json.JSONDecodeError:
        return None, []
    elements = (caption or {}).get("compositional_deconstruction", {}).get("elements") \
        if isinstance(caption, dict) and isinstance(caption.get("compositional_deconstruction"), dict) else None
    if not isinstance(elements, list):
        return None, []
    choices = []
    for index, element in enumerate(elements):
        if isinstance(element, dict) and isinstance(element.get("bbox"), list):
            words = element.get("text") or element.get("desc") or ""
            words = words if len(words) <= 40 else words[:39] + "…"
            choices.append((f"{index + 1} · {element.get('type')} · {words}", index))
    return caption, choices


def element_at(caption: dict, choices: list[tuple[str, int]], x: float, y: float, width: int,
               height: int) -> int | None:
    """The boxed element under pixel (x, y) of a width x height result (the smallest box when several
    overlap: the one drawn on top of a larger one is what a click means), or None."""
    grid_y, grid_x = pixels_to_bbox((x, y, x, y), width, height)[:2]
    elements = caption["compositional_deconstruction"]["elements"]
    hits = []
    for _, index in choices:
        y_min, x_min, y_max, x_max = elements[index]["bbox"]
        if y_min <= grid_y <= y_max and x_min <= grid_x <= x_max:
            hits.append(((y_max - y_min) * (x_max - x_min), index))
    return min(hits)[1] if hits else None


def edited_caption(caption: dict, index: Any, text: str | None, desc: str | None) -> tuple[dict, list[int]]:
    """A copy of `caption` with element `index`'s text (text elements only) and description replaced;
    -> (the caption, that element's bbox). ValueError for an index that names no boxed element."""
    elements = caption["compositional_deconstruction"]["elements"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(elements) \
            or not isinstance(elements[index].get("bbox"), list):
        raise ValueError("Pick the element whose box is regenerated first.")
    new = json.loads(json.dumps(caption))
    element = new["compositional_deconstruction"]["elements"][index]
    if element.get("type") == "text" and text is not None:
        element["text"] = text
    if desc is not None:
        element["desc"] = desc
    return new, list(element["bbox"])


class RegionEditPanel(ResultPanel):
    """The region-edit controls for the Compose tab (see the module docstring)."""

    def build(self, ui: Components) -> None:
        with gr.Accordion("Region edit (selected result)", open=True, elem_id="region-panel"):
            ui.add("region_note", gr.Markdown("Select a result, pick one of its boxes (here or by clicking it "
                                              "on the overlay), change its text or description and "
                                              "regenerate only that box.", elem_id="region-note"))
            ui.add("region_element", gr.Dropdown([], label="Element (box)", elem_id="region-element"))
            # The picked element as the server knows it: events read this, not the dropdown, whose value
            # Gradio checks against choices that another event may be replacing at that moment.
            ui.add("region_picked", gr.State(None))
            ui.add("region_text", gr.Textbox(label="Text in the box", lines=1, elem_id="region-text"))
            ui.add("region_desc", gr.Textbox(label="Description", lines=2, elem_id="region-desc"))
            with gr.Row():
                ui.add("region_strength", gr.Slider(0.05, 1.0, value=REGION_STRENGTH, step=0.05,
                                                    label=LABELS["denoising_strength"], elem_id="region-strength",
                                                    info="1.0 redraws the box from noise"))
                ui.add("region_seed", gr.Number(-1, label=LABELS["seed"], precision=0, elem_id="region-seed",
                                                info="-1 picks a random seed"))
            ui.add("region_run", gr.Button("Regenerate region", variant="primary", elem_id="region-run"))
            ui.add("region_status", gr.Markdown(elem_id="region-status"))
        ui.on([ui["selected_result"].change, ui["results"].change], self.on_result_changed,
              ["results", "selected_result", "region_picked"], trigger_mode="always_last", **GLUE)
        ui.on(ui["overlay"].select, self.on_overlay_click, ["results", "selected_result"], **GLUE)
        ui.on(ui["region_element"].input, self.on_element_picked, ["results", "selected_result", "region_element"],
              **GLUE)
        ui.on(ui["region_run"].click, self.on_regenerate,
              ["browser_id", "results", "selected_result", "region_picked", "region_text", "region_desc",
               "region_strength", "region_seed"],
              api_visibility="private", concurrency_id=GPU, concurrency_limit=1, show_progress_on=[ui["region_status"]])

    @emits("region_element", "region_picked", "region_text", "region_desc", "region_note")
    def on_result_changed(self, results: list[dict] | None, selected: int | None, current: Any = None) -> dict:
        """The boxes of the newly selected result; the element picked before stays picked when the new
        result has it (an edited result has the same elements), else the first."""
        if isinstance(selected, bool) or not isinstance(selected, int) or not results \
                or not 0 <= selected < len(results):
            return {"region_element": gr.update(choices=[], value=None), "region_picked": None, "region_text": "",
                    "region_desc": "", "region_note": "Select a result to edit one of its boxes."}
        caption, choices = caption_elements(results[selected]["prompt"])
        if not choices:
            return {"region_element": gr.update(choices=[], value=None), "region_picked": None, "region_text": "",
                    "region_desc": "", "region_note": NO_BOXES}
        index = current if current in [value for _, value in choices] else choices[0][1]
        element = caption["compositional_deconstruction"]["elements"][index]
        return {"region_element": gr.update(choices=choices, value=index), "region_picked": index,
                "region_text": element.get("text", ""), "region_desc": element.get("desc", ""),
                "region_note": escape(f"Result #{selected + 1}: {len(choices)} box(es).")}

    @emits("region_element", "region_picked", "region_text", "region_desc")
    def on_overlay_click(self, results: list[dict] | None, selected: int | None, evt: gr.SelectData) -> dict:
        """A click on the placement overlay picks the box under it."""
        record = selected_record(results, selected)
        caption, choices = caption_elements(record["prompt"])
        width, height = record["settings"].get("width"), record["settings"].get("height")
        point = evt.index if isinstance(evt.index, (list, tuple)) and len(evt.index) == 2 else None
        if caption is None or point is None or not all(isinstance(v, int) and v > 0 for v in (width, height)) \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point):
            return {}
        index = element_at(caption, choices, point[0], point[1], width, height)
        if index is None:
            warn("No box there: click inside one of the boxes drawn on the overlay.")
            return {}
        element = caption["compositional_deconstruction"]["elements"][index]
        return {"region_element": index, "region_picked": index, "region_text": element.get("text", ""),
                "region_desc": element.get("desc", "")}

    @emits("region_picked", "region_text", "region_desc")
    def on_element_picked(self, results: list[dict] | None, selected: int | None, index: Any) -> dict:
        caption, choices = caption_elements(selected_record(results, selected)["prompt"])
        if index not in [value for _, value in choices]:
            return {}
        element = caption["compositional_deconstruction"]["elements"][index]
        return {"region_picked": index, "region_text": element.get("text", ""), "region_desc": element.get("desc", "")}

    @emits("results", "gallery", "region_status", *RESULT_VIEW)
    def on_regenerate(self, browser_id, results: list[dict] | None, selected: int | None, index: Any,
                      text: str | None, desc: str | None, strength, seed, request: gr.Request = None,
                      progress=gr.Progress()) -> dict:
        record = selected_record(results, selected)
        caption, _ = caption_elements(record["prompt"])
        if caption is None:
            raise gr.Error(NO_BOXES)
        try:
            folder = results_dir(owner_folder(getattr(request, "username", None), browser_id))
            source = owned_result(folder, record["path"])
            new_caption, box = edited_caption(caption, index, text, desc)
            pipe = self.slot.require().pipe
            settings = settings_from_record(record["settings"], self.limits, seed=seed, input_image=str(source),
                                            edit_region=box, denoising_strength=strength)
            loras, notes = restore_selection(record["settings"].get("loras"))
            prepared = pipe.prepare(json.dumps(new_caption, ensure_ascii=False), settings)
        except SettingsError as err:
            raise gr.Error(describe_problems(err, LABELS)) from None
        except (NotYourResult, ValueError, ModelNotLoadedError) as err:
            raise gr.Error(str(err)) from None
        saved, listed = run_and_save(pipe, prepared, loras, notes, self.stops, folder, request, progress)
        y0, x0, y1, x1 = box
        return {"results": listed, "gallery": gallery_items(listed),
                "region_status": escape(f"Regenerated box {index + 1} ([{y0}, {x0}, {y1}, {x1}] of {BBOX_GRID}) "
                                        f"at strength {settings.denoising_strength:g}, seed "
                                        f"{saved[0]['settings']['seed']}."),
                **self.result_view(listed, len(listed) - 1)}


__all__ = ["REGION_STRENGTH", "RegionEditPanel", "caption_elements", "edited_caption", "element_at"]
