"""The "Model" tab: which weights the process serves, in which memory mode, and what that will cost.

One model is loaded per app process and shared by every session (model_slot.py); loading and
unloading run in the GPU concurrency group, so they queue behind generations instead of colliding.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.placement import MEMORY_MODES

from ..generation import checked_size
from ..model_slot import ModelSlot
from ..wiring import GLUE, GPU, Components, emits

VARIANTS: dict[str, str] = {
    "fp8 (official, ~27 GB)": "ideogram-ai/ideogram-4-fp8",
    "bf16 repackage (~54 GB)": "DiffSynth-Studio/ideogram-4-bf16-repackage",
    "nf4 (~16 GB, CUDA)": "ideogram-ai/ideogram-4-nf4",
    "local folder": "",
}
# Which entry of pipeline/estimate.py's KNOWN_WEIGHTS sizes a variant that is not downloaded yet.
WEIGHT_FAMILY = {"fp8 (official, ~27 GB)": "fp8", "bf16 repackage (~54 GB)": "bf16", "nf4 (~16 GB, CUDA)": "nf4"}
MEMORY_HELP = ("`full`: everything on the GPU (fastest). `offload`: each part visits the GPU only while it runs "
               "(peak ≈ one transformer). `cpu`: tiny test models and debugging. Gated weights need the licence "
               "accepted on the model page and `HF_TOKEN` set.")
# The estimate is for one image of the size chosen in the Compose tab.
ESTIMATE_INPUTS = ["variant", "model_source", "memory", "width", "height"]


class ModelTab:
    def __init__(self, slot: ModelSlot, limits: Limits = DEFAULT_LIMITS):
        self.slot = slot
        self.limits = limits

    def build(self, ui: Components) -> None:
        """Create the tab's components inside the current gr.Tab and wire their events. Reads the
        size controls of the Compose tab, which must be built first."""
        ui.add("model_status", gr.Markdown(elem_id="model-status"))
        with gr.Row():
            ui.add("variant", gr.Dropdown(list(VARIANTS), value=next(iter(VARIANTS)), label="Variant"))
            ui.add("model_source", gr.Textbox(next(iter(VARIANTS.values())), label="Repo id or local folder"))
            ui.add("memory", gr.Radio(list(MEMORY_MODES), value="full", label="Memory mode"))
        ui.add("model_estimate", gr.Markdown())
        with gr.Row():
            ui.add("load_model", gr.Button("Load model", variant="primary"))
            ui.add("unload_model", gr.Button("Unload"))
        gr.Markdown(MEMORY_HELP)

        ui.on(ui.demo.load, self.on_page_load, ESTIMATE_INPUTS, api_visibility="private", show_progress="hidden")
        ui.on(ui["variant"].input, self.on_variant, ["variant"], **GLUE)
        ui.on([ui[name].change for name in ESTIMATE_INPUTS[:3]], self.on_estimate, ESTIMATE_INPUTS, **GLUE)
        ui.on(ui["load_model"].click, self.on_load_model, ["model_source", "memory"], api_visibility="private",
              concurrency_id=GPU, concurrency_limit=1, show_progress_on=[ui["model_status"]])
        ui.on(ui["unload_model"].click, self.on_unload_model, api_visibility="private", concurrency_id=GPU,
              concurrency_limit=1)

    @emits("model_status", "model_estimate")
    def on_page_load(self, variant: str, source: str, memory: str, width, height) -> dict:
        return {"model_status": self.slot.status(), **self.on_estimate(variant, source, memory, width, height)}

    @emits("model_source")
    def on_variant(self, variant: str) -> dict:
        return {"model_source": VARIANTS.get(variant, "")}

    @emits("model_estimate")
    def on_estimate(self, variant: str, source: str, memory: str, width, height) -> dict:
        from ideogram_app.pipeline.estimate import KNOWN_WEIGHTS, estimate_memory, weight_bytes_from_files

        try:
            size = checked_size(width, height, self.limits)
            if source and Path(source).expanduser().is_dir():
                weights = weight_bytes_from_files(Path(source).expanduser())
            else:
                weights = KNOWN_WEIGHTS[WEIGHT_FAMILY.get(variant, "fp8")]
            estimate = estimate_memory(weights, memory, height=size.height, width=size.width)
        except (ValueError, OSError) as err:  # SettingsError for the size, unknown mode, unreadable headers
            return {"model_estimate": f"Cannot estimate: {err}"}
        return {"model_estimate": f"Needs {estimate.describe()} for one {size.width}×{size.height} image in "
                                  f"`{memory}` mode."}

    @emits("model_status")
    def on_load_model(self, source: str, memory: str, progress=gr.Progress(track_tqdm=True)) -> dict:
        progress(0, desc=f"loading {source}")
        try:
            self.slot.load(source, memory)
        except Exception as err:
            raise gr.Error(f"Could not load {source!r}: {err}", duration=None) from None
        return {"model_status": self.slot.status()}

    @emits("model_status")
    def on_unload_model(self) -> dict:
        self.slot.unload()
        return {"model_status": self.slot.status()}
