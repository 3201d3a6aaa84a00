"""History: a user's results as a browsable, comparable, deletable collection (docs/app.md, "History").

The history is the user's results folder as results.py defines it (`owner_folder`, `results_dir`,
`list_results`: one folder per login or per browser id, listed from disk), so it survives reloads and
server restarts without any other record. On the selected result of the gallery:

- **Reuse seed** puts its seed into the Seed field (and unticks "New random seed each run");
- **Vary** makes one new image from its exact prompt and sampler settings (and LoRAs, found again by
  their sha256) with a new random seed, into the same folder; an img2img or region-edit result varies
  as text-to-image, since its input image is not kept;
- **Delete** asks first (a Confirm / Cancel pair), then removes that PNG and its overlay, and only
  from the user's own folder: the file must be a result name directly inside that folder, whatever
  the session's list says (`owned_result`);
- **Compare** shows any two results in a before/after slider (`gr.ImageSlider`);
- **Download all** zips the user's results, newest first, within `ZIP_MAX_FILES` and `ZIP_MAX_BYTES`
  (what is left out is said), as a temporary download (results.scratch_file).

The functions above the panel hold the rules and need no Gradio; `HistoryPanel.build` lays out and wires
the controls inside the current layout block, next to the Compose tab's gallery, whose component names
("results", "selected_result", "gallery", "seed", …) it reads and updates.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import gradio as gr

from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.sampling import GenerationCancelled
from ideogram_app.pipeline.settings import RANDOM_SEED, GenerationSettings, SettingsError

from .generation import GenerationFailed, StopSignals, describe_problems, generate_images
from .loras import restore_selection
from .markup import escape
from .model_slot import ModelNotLoadedError, ModelSlot
from .results import (RESULT_NAME, gallery_items, list_results, owner_folder, results_dir, save_results,
                      scratch_file)
from .wiring import GPU, GLUE, Components, emits, warn

ZIP_MAX_FILES = 1000
ZIP_MAX_BYTES = 512 * 1024**2  # PNGs are compressed already: the zip is about this big at most
RESULT_VIEW = ("selected_result", "result_settings", "overlay")
NOTHING_SELECTED = "Select a result in the gallery first."
# What a stored result's settings are called as GenerationSettings fields.
RECORD_FIELDS = {"width": "width", "height": "height", "preset": "preset", "steps": "num_inference_steps",
                 "guidance": "guidance_schedule", "mu": "mu", "std": "std"}


class NotYourResult(ValueError):
    """A path that is not a result directly inside the user's own results folder."""


def owned_result(folder: Path, path: str | os.PathLike) -> Path:
    """`path` if it is a result file (results.RESULT_NAME) directly inside `folder`, not a link;
    NotYourResult otherwise (a `..`, another user's folder, any other file). The message names the
    file's last part only, never where the server keeps it."""
    candidate = Path(path)
    name = candidate.name
    inside = os.path.realpath(candidate.parent) == os.path.realpath(folder)
    if not RESULT_NAME.fullmatch(name) or not inside or candidate.is_symlink() or not candidate.is_file():
        raise NotYourResult(f"{name or path} is not one of your results (it may have been deleted already)")
    return candidate


def delete_result(folder: Path, path: str | os.PathLike) -> list[str]:
    """Delete one result of `folder` and its placement overlay; -> the names deleted."""
    result = owned_result(folder, path)
    overlay = result.with_name(result.stem + "-overlay.png")
    deleted = []
    for file in (result, overlay):
        if file.is_file() and not file.is_symlink():
            file.unlink()
            deleted.append(file.name)
    return deleted


def zip_results(folder: Path, max_files: int = ZIP_MAX_FILES,
                max_bytes: int = ZIP_MAX_BYTES) -> tuple[Path | None, list[str], int]:
    """All results of `folder` in one zip (stored, not recompressed), newest first until either bound
    is reached; -> (the zip in the scratch folder, or None when there is nothing, the names in it,
    how many were left out)."""
    found = []
    for entry in os.scandir(folder) if folder.is_dir() else []:
        if RESULT_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            stat = entry.stat()
            found.append((stat.st_mtime_ns, entry.name, stat.st_size))
    found.sort(reverse=True)
    chosen, total = [], 0
    for _, name, size in found:
        if len(chosen) == max_files or total + size > max_bytes:
            break
        chosen.append(name)
        total += size
    if not chosen:
        return None, [], len(found)
    path = scratch_file("ideogram-results.zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in chosen:
            archive.write(folder / name, arcname=name)
    return path, chosen, len(found) - len(chosen)


def settings_from_record(settings: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS, **changes) -> GenerationSettings:
    """The request that re-makes a stored result (its metadata's settings: size, preset, steps,
    guidance schedule, mu, std), with `changes` applied (a seed, an input image, a region…). The
    values come from a file, so the request model checks them like any other (SettingsError)."""
    values = {field: settings[key] for key, field in RECORD_FIELDS.items() if settings.get(key) is not None}
    return GenerationSettings(**values, **changes, limits=limits)


def selected_record(results: list[dict] | None, selected: Any) -> dict:
    """The gallery's selected result, or gr.Error saying to select one."""
    if isinstance(selected, bool) or not isinstance(selected, int) or not results or not 0 <= selected < len(results):
        raise gr.Error(NOTHING_SELECTED)
    return results[selected]


def compare_choices(results: list[dict]) -> list[tuple[str, str]]:
    """Dropdown choices for the compare slider: (label, file name), newest first."""
    labels = []
    for number, record in reversed(list(enumerate(results, 1))):
        s = record.get("settings", {})
        edit = " · region edit" if s.get("edit_region") else ""
        labels.append((f"#{number} · seed {s.get('seed')} · {s.get('width')}×{s.get('height')}{edit}",
                       Path(record["path"]).name))
    return labels


@dataclass
class ResultPanel:
    """What a Compose-tab panel that acts on the selected result needs (this history panel and
    region_edit.py's): the model, the request limits, the stop signals of running generations, and
    `result_view(results, index)`, the tab's own "show this result" output (selected index, details,
    overlay)."""

    slot: ModelSlot
    limits: Limits
    stops: StopSignals
    result_view: Callable[[list[dict], int], dict]


class HistoryPanel(ResultPanel):
    """History controls for the Compose tab (see the module docstring)."""

    def build(self, ui: Components) -> None:
        with gr.Accordion("History", open=True, elem_id="history-panel"):
            with gr.Row():
                ui.add("history_reuse", gr.Button("Reuse seed", size="sm", elem_id="history-reuse"))
                ui.add("history_vary", gr.Button("Vary (new seed)", size="sm", elem_id="history-vary"))
                ui.add("history_delete", gr.Button("Delete…", size="sm", elem_id="history-delete"))
                ui.add("history_zip", gr.Button("Download all (zip)", size="sm", elem_id="history-zip"))
            with gr.Row():
                ui.add("history_confirm", gr.Button("Confirm delete", variant="stop", size="sm", visible=False,
                                                    elem_id="history-confirm"))
                ui.add("history_cancel", gr.Button("Cancel", size="sm", visible=False, elem_id="history-cancel"))
            ui.add("history_pending", gr.State(None))
            ui.add("history_status", gr.Markdown(elem_id="history-status"))
            ui.add("history_file", gr.File(label="Your results", interactive=False, visible=False,
                                           elem_id="history-file"))
            with gr.Row():
                ui.add("compare_before", gr.Dropdown([], label="Compare: before", elem_id="compare-before"))
                ui.add("compare_after", gr.Dropdown([], label="after", elem_id="compare-after"))
            ui.add("compare", gr.ImageSlider(label="Before / after", type="filepath", interactive=False,
                                             elem_id="compare-slider", max_height=420))
        self._wire(ui)

    def _wire(self, ui: Components) -> None:
        ui.on(ui["history_reuse"].click, self.on_reuse_seed, ["results", "selected_result"], **GLUE)
        ui.on(ui["history_vary"].click, self.on_vary, ["browser_id", "results", "selected_result"],
              api_visibility="private", concurrency_id=GPU, concurrency_limit=1, show_progress_on=[ui["gallery"]])
        ui.on(ui["history_delete"].click, self.on_delete, ["results", "selected_result"], **GLUE)
        ui.on(ui["history_confirm"].click, self.on_confirm_delete, ["browser_id", "history_pending"], **GLUE)
        ui.on(ui["history_cancel"].click, self.on_cancel_delete, [], **GLUE)
        ui.on(ui["history_zip"].click, self.on_download_all, ["browser_id"], api_visibility="private",
              concurrency_id="history_zip", concurrency_limit=2)
        ui.on(ui["results"].change, self.on_results_changed, ["results"], **GLUE)
        ui.on([ui["compare_before"].input, ui["compare_after"].input], self.on_compare,
              ["results", "compare_before", "compare_after"], **GLUE)

    @staticmethod
    def folder(request: gr.Request | None, browser_id: Any) -> Path:
        """This user's results folder (results.py's rule), or gr.Error when the page has no id yet."""
        try:
            return results_dir(owner_folder(getattr(request, "username", None), browser_id))
        except ValueError as err:
            raise gr.Error(str(err)) from None

    @emits("seed", "randomize", "history_status")
    def on_reuse_seed(self, results: list[dict], selected: int | None) -> dict:
        seed = selected_record(results, selected)["settings"].get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise gr.Error("This result's metadata holds no seed.")
        return {"seed": seed, "randomize": False,
                "history_status": f"Seed {seed} is in the Seed field; Generate uses it."}

    @emits("results", "gallery", "history_status", *RESULT_VIEW)
    def on_vary(self, browser_id, results: list[dict], selected: int | None, request: gr.Request = None,
                progress=gr.Progress()) -> dict:
        """Same prompt, sampler settings and LoRAs as the selected result, a new random seed."""
        record = selected_record(results, selected)
        folder = self.folder(request, browser_id)
        try:
            pipe = self.slot.require().pipe
            settings = settings_from_record(record["settings"], self.limits, seed=RANDOM_SEED)
            loras, notes = restore_selection(record["settings"].get("loras"))
            prepared = pipe.prepare(record["prompt"], settings)
        except SettingsError as err:
            raise gr.Error(f"This result cannot be varied: {describe_problems(err, {})}") from None
        except (ValueError, ModelNotLoadedError) as err:
            raise gr.Error(str(err)) from None
        saved, listed = run_and_save(pipe, prepared, loras, notes, self.stops, folder, request, progress)
        return {"results": listed, "gallery": gallery_items(listed),
                "history_status": escape(f"Variation: seed {saved[0]['settings']['seed']} (the original has "
                                         f"seed {record['settings'].get('seed')})."),
                **self.result_view(listed, len(listed) - 1)}

    @emits("history_pending", "history_confirm", "history_cancel", "history_status")
    def on_delete(self, results: list[dict], selected: int | None) -> dict:
        name = Path(selected_record(results, selected)["path"]).name
        return {"history_pending": name, "history_confirm": gr.update(visible=True),
                "history_cancel": gr.update(visible=True),
                "history_status": escape(f"Delete {name}? This cannot be undone.")}

    @emits("results", "gallery", "history_pending", "history_confirm", "history_cancel", "history_status",
           *RESULT_VIEW)
    def on_confirm_delete(self, browser_id, pending: str | None, request: gr.Request = None) -> dict:
        hidden = {"history_pending": None, "history_confirm": gr.update(visible=False),
                  "history_cancel": gr.update(visible=False)}
        if not isinstance(pending, str):
            return {**hidden, "history_status": "Nothing to delete."}
        folder = self.folder(request, browser_id)
        try:
            deleted = delete_result(folder, folder / pending)
        except NotYourResult as err:
            raise gr.Error(str(err)) from None
        listed = list_results(folder)
        return {**hidden, "results": listed, "gallery": gallery_items(listed),
                "history_status": escape(f"Deleted {deleted[0]}."),
                "selected_result": None, "result_settings": None, "overlay": None}

    @emits("history_pending", "history_confirm", "history_cancel", "history_status")
    def on_cancel_delete(self) -> dict:
        return {"history_pending": None, "history_confirm": gr.update(visible=False),
                "history_cancel": gr.update(visible=False), "history_status": "Nothing was deleted."}

    @emits("history_file", "history_status")
    def on_download_all(self, browser_id, request: gr.Request = None) -> dict:
        path, names, left_out = zip_results(self.folder(request, browser_id))
        if path is None:
            return {"history_status": "You have no results yet.", "history_file": gr.update(visible=False)}
        note = f" The {left_out} oldest are not in it (at most {ZIP_MAX_FILES} files, " \
               f"{ZIP_MAX_BYTES // 1024**2} MiB)." if left_out else ""
        return {"history_file": gr.update(value=str(path), visible=True),
                "history_status": f"{len(names)} result(s) in the zip.{note}"}

    @emits("compare_before", "compare_after", "compare")
    def on_results_changed(self, results: list[dict] | None) -> dict:
        """New choices for the compare slider; it starts at the two newest results."""
        choices = compare_choices(results or [])
        if len(choices) < 2:
            return {"compare_before": gr.update(choices=choices, value=None),
                    "compare_after": gr.update(choices=choices, value=None), "compare": None}
        before, after = choices[1][1], choices[0][1]
        return {"compare_before": gr.update(choices=choices, value=before),
                "compare_after": gr.update(choices=choices, value=after),
                "compare": self._pair(results, before, after)}

    @emits("compare")
    def on_compare(self, results: list[dict] | None, before: str | None, after: str | None) -> dict:
        if not before or not after:
            return {}
        return {"compare": self._pair(results or [], before, after)}

    @staticmethod
    def _pair(results: list[dict], before: str, after: str) -> tuple[str, str]:
        """The two results' paths, looked up in the session's own listing (a name from the page that
        is not in it is refused)."""
        by_name = {Path(r["path"]).name: r["path"] for r in results}
        if before not in by_name or after not in by_name:
            raise gr.Error("That result is not in your history any more; reload the page.")
        return by_name[before], by_name[after]


def run_and_save(pipe, prepared, loras, notes: list[str], stops: StopSignals, folder: Path,
                 request: gr.Request | None, progress) -> tuple[list[dict], list[dict]]:
    """A new result made from an earlier one (vary, region edit): the LoRA notes shown, one run of the
    prepared request in the GPU slot (generation.generate_images), stoppable by the tab's Stop button like
    Generate (a stopped run or a failure becomes the message), saved to `folder`. Returns the saved
    records and the folder's listing after them."""
    for note in notes:
        warn(f"LoRAs: {note}")
    session = request.session_hash if request is not None else "local"
    stop_event = stops.start(session)
    try:
        images = generate_images(pipe, prepared, stop_event=stop_event, loras=loras,
                                 on_step=lambda step, total: progress((step, total), desc=f"step {step}/{total}"))
    except GenerationCancelled:
        raise gr.Error("Stopped; nothing was saved.") from None
    except (ValueError, GenerationFailed) as err:
        raise gr.Error(str(err)) from None
    finally:
        stops.finish(session)
    saved = save_results(images, folder)
    return saved, list_results(folder)

__all__ = ["HistoryPanel", "NotYourResult", "delete_result", "owned_result", "run_and_save", "settings_from_record",
           "zip_results"]
