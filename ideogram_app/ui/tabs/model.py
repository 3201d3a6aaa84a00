"""The "Model" tab: which weights the process serves, in which memory mode, and what that will cost.

One model is loaded per app process and shared by every session (model_slot.py); loading and
unloading run in the GPU concurrency group, so they queue behind generations instead of colliding.
Only an operator may change it (policy.py): the controls start disabled and the page-load event
enables them for operators, and every handler that loads, unloads, lists the models directories
or reads a model folder asks the policy again with the event's `gr.Request` — a visitor can call
these private events directly, so the disabled buttons are a courtesy, not the check.

The "Prompt expansion" panel sets the language model behind the Compose tab's Expand button and
`/expand` (expansion.py) under the same rule: it points the server at a URL or a folder and may
spend the operator's API key. The key is write-only: the page never receives it back.
"""
from __future__ import annotations

import gradio as gr

from ideogram_app.expand import BackendError
from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.placement import MEMORY_MODES, check_memory_mode

from ..expansion import KIND_LABELS, KINDS, Expander
from ..generation import checked_size
from ..markup import code, escape
from ..model_slot import ModelSlot
from ..policy import CHANGE_MODEL, HUB_PREFIXES, NotAllowedError, Policy
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
# What an operator may use; disabled for everyone else (and for everyone until the page has loaded).
EXPAND_CONTROLS = ("expand_kind", "expand_url", "expand_model", "expand_key", "expand_apply", "expand_forget_key")
CONTROLS = ("variant", "model_source", "memory", "model_folder", "load_model", "unload_model", *EXPAND_CONTROLS)
CHANGE_EXPANSION = "change the prompt-expansion backend"


class ModelTab:
    def __init__(self, slot: ModelSlot, limits: Limits = DEFAULT_LIMITS, policy: Policy = Policy(),
                 expander: Expander | None = None):
        self.slot = slot
        self.limits = limits
        self.policy = policy
        self.expander = expander if expander is not None else Expander()

    def build(self, ui: Components) -> None:
        """Create the tab's components inside the current gr.Tab and wire their events. Reads the
        size controls of the Compose tab, which must be built first."""
        ui.add("model_status", gr.Markdown(elem_id="model-status"))
        ui.add("model_policy", gr.Markdown(elem_id="model-policy"))
        with gr.Row():
            ui.add("variant", gr.Dropdown(list(VARIANTS), value=next(iter(VARIANTS)), label="Variant",
                                          interactive=False))
            ui.add("model_source", gr.Textbox(next(iter(VARIANTS.values())), label="Repo id or local folder",
                                              interactive=False))
            ui.add("memory", gr.Radio(list(MEMORY_MODES), value="full", label="Memory mode", interactive=False))
        ui.add("model_folder", gr.Dropdown([], value=None, label="Folders in the models directories",
                                           visible=bool(self.policy.models_dirs), interactive=False))
        ui.add("model_estimate", gr.Markdown())
        with gr.Row():
            ui.add("load_model", gr.Button("Load model", variant="primary", interactive=False))
            ui.add("unload_model", gr.Button("Unload", interactive=False))
        gr.Markdown(MEMORY_HELP)
        self._layout_expansion(ui)

        ui.on(ui.demo.load, self.on_page_load, ESTIMATE_INPUTS, api_visibility="private", show_progress="hidden")
        ui.on(ui["variant"].input, self.on_variant, ["variant"], **GLUE)
        ui.on(ui["model_folder"].input, self.on_folder, ["model_folder"], **GLUE)
        ui.on([ui[name].change for name in ESTIMATE_INPUTS[:3]], self.on_estimate, ESTIMATE_INPUTS, **GLUE)
        ui.on(ui["load_model"].click, self.on_load_model, ["model_source", "memory"], api_visibility="private",
              concurrency_id=GPU, concurrency_limit=1, show_progress_on=[ui["model_status"]])
        ui.on(ui["unload_model"].click, self.on_unload_model, api_visibility="private", concurrency_id=GPU,
              concurrency_limit=1)
        ui.on(ui["expand_apply"].click, self.on_expand_settings, ["expand_kind", "expand_url", "expand_model",
                                                                  "expand_key"], **GLUE)
        ui.on(ui["expand_forget_key"].click, self.on_expand_forget_key, **GLUE)

    def _layout_expansion(self, ui: Components) -> None:
        with gr.Accordion("Prompt expansion (the Expand button and /expand)", open=False, elem_id="expand-settings"):
            ui.add("expand_status", gr.Markdown(elem_id="expand-status"))
            with gr.Row():
                ui.add("expand_kind", gr.Radio(list(KINDS), value=KINDS[0], label="Backend", interactive=False,
                                               info=" · ".join(f"{k}: {v}" for k, v in KIND_LABELS.items())))
                ui.add("expand_url", gr.Textbox("", label="Server URL (API root)", interactive=False,
                                                placeholder="http://localhost:11434/v1", elem_id="expand-url"))
                ui.add("expand_model", gr.Textbox("", label="Model name, or the model folder (local)",
                                                  interactive=False, elem_id="expand-model"))
                ui.add("expand_key", gr.Textbox("", label="API key (empty: keep the current one)", type="password",
                                                interactive=False, elem_id="expand-key"))
            with gr.Row():
                ui.add("expand_apply", gr.Button("Use these settings", interactive=False, elem_id="expand-apply"))
                ui.add("expand_forget_key", gr.Button("Forget the API key", interactive=False))

    @emits("model_status", "model_estimate", "model_policy", "expand_status", *CONTROLS)
    def on_page_load(self, variant: str, source: str, memory: str, width, height, request: gr.Request) -> dict:
        operator = self.policy.is_operator(request)
        enabled = {name: gr.update(interactive=operator) for name in CONTROLS}
        enabled.update(self._expansion_form(operator))
        if operator:
            enabled["model_folder"] = gr.update(choices=self.policy.model_folders(), interactive=True)
            note = escape(f"You may load and unload the model. Model sources allowed here: "
                          f"{self.policy.describe_sources()}.")
        else:
            note = f"**Read-only.** {escape(self.policy.refusal(request, CHANGE_MODEL))}"
        return {"model_status": self.slot.status(detail=operator), "model_policy": note, **enabled,
                "expand_status": self._expansion_status(operator),
                **self.on_estimate(variant, source, memory, width, height, request)}

    def _expansion_form(self, operator: bool) -> dict:
        """The expansion fields filled from the settings: all of them for an operator, the backend
        and (for a server) the model name for a visitor; the key field always empty."""
        settings = self.expander.settings
        model = settings.model if operator or settings.kind == "openai" else ""
        return {"expand_kind": gr.update(value=settings.kind, interactive=operator),
                "expand_url": gr.update(value=settings.url if operator else "", interactive=operator),
                "expand_model": gr.update(value=model, interactive=operator),
                "expand_key": gr.update(value="", interactive=operator)}

    def _expansion_status(self, operator: bool, done: str = "") -> str:
        return escape(f"{done}Prompt expansion: {self.expander.settings.describe(detail=operator)}")

    def _require_operator(self, request: gr.Request) -> None:
        if not self.policy.is_operator(request):
            raise gr.Error(f"Only an operator may {CHANGE_EXPANSION} here: {self.policy.reason(request)}",
                           duration=None)

    @emits("expand_status", "expand_key")
    def on_expand_settings(self, kind: str, url: str, model: str, key: str, request: gr.Request) -> dict:
        """An operator's expansion settings. A local folder goes through the model-source allow-list
        (the same rule as the model's); the key field is emptied again, the key kept on the server."""
        self._require_operator(request)
        if kind == "local":
            try:
                model = self.policy.resolve_source(model)
            except NotAllowedError as err:
                raise gr.Error(f"Model: {err}", duration=None) from None
            if model.startswith(HUB_PREFIXES):
                raise gr.Error("Model: the local backend reads a model folder on this server, not a Hub id",
                               duration=None)
        try:
            self.expander.configure(kind, url, model, key)
        except BackendError as err:
            raise gr.Error(str(err), duration=None) from None
        return {"expand_status": self._expansion_status(True, "Saved. "), "expand_key": ""}

    @emits("expand_status", "expand_key")
    def on_expand_forget_key(self, request: gr.Request) -> dict:
        self._require_operator(request)
        self.expander.forget_key()
        return {"expand_status": self._expansion_status(True, "The API key is forgotten. "), "expand_key": ""}

    @emits("model_source")
    def on_variant(self, variant: str) -> dict:
        return {"model_source": VARIANTS.get(variant, "")}

    @emits("variant", "model_source")
    def on_folder(self, folder: str) -> dict:
        """A folder picked from the list (which only operators are given) goes into the source box."""
        return {"variant": "local folder", "model_source": folder or ""}

    @emits("model_estimate")
    def on_estimate(self, variant: str, source: str, memory: str, width, height, request: gr.Request) -> dict:
        """Memory needed for one image. An operator's local folder is measured from its weight files;
        for everyone else (and Hub ids) the variant's published sizes are used, so the estimate
        never tells a visitor whether a server path exists."""
        from ideogram_app.pipeline.estimate import KNOWN_WEIGHTS, estimate_memory, weight_bytes_from_files

        try:
            size = checked_size(width, height, self.limits)
            weights = KNOWN_WEIGHTS[WEIGHT_FAMILY.get(variant, "fp8")]
            if self.policy.is_operator(request):
                target = self.policy.resolve_source(source)
                if not target.startswith(HUB_PREFIXES):
                    weights = weight_bytes_from_files(target)
            estimate = estimate_memory(weights, memory, height=size.height, width=size.width)
        except (ValueError, OSError) as err:  # SettingsError for the size, unknown mode, unreadable headers, policy
            return {"model_estimate": f"Cannot estimate: {escape(err)}"}
        return {"model_estimate": f"Needs {estimate.describe()} for one {size.width}×{size.height} image in "
                                  f"{code(memory)} mode."}

    @emits("model_status")
    def on_load_model(self, source: str, memory: str, request: gr.Request,
                      progress=gr.Progress(track_tqdm=True)) -> dict:
        try:
            self.policy.require(request, CHANGE_MODEL)
            target = self.policy.resolve_source(source)
        except NotAllowedError as err:
            raise gr.Error(str(err), duration=None) from None
        try:
            check_memory_mode(memory)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        progress(0, desc=f"loading {target}")
        try:
            self.slot.load(target, memory)
        except Exception as err:  # the working model still serves (ModelSlot.load swaps only on success)
            still = " The model loaded before still serves." if self.slot.loaded else ""
            raise gr.Error(f"Could not load {source!r}: {str(err).rstrip('.')}.{still}", duration=None) from None
        return {"model_status": self.slot.status()}

    @emits("model_status")
    def on_unload_model(self, request: gr.Request) -> dict:
        try:
            self.policy.require(request, CHANGE_MODEL)
        except NotAllowedError as err:
            raise gr.Error(str(err), duration=None) from None
        self.slot.unload()
        return {"model_status": self.slot.status()}
