"""The "Model" tab: which weights the process serves, in which memory mode, and what that will cost.

One model is loaded per app process and shared by every session (model_slot.py); loading and
unloading run in the GPU concurrency group, so they queue behind generations instead of colliding.
Only an operator may change it (policy.py): the controls start disabled and the page-load event
enables them for operators, and every handler that loads, unloads, lists the models directories
or reads a model folder asks the policy again with the event's `gr.Request` — a visitor can call
these private events directly, so the disabled buttons are a courtesy, not the check.

What the controls mean and why the variant follows the source box: a variant is a shortcut that
fills the source box with a Hub id, and the box is the truth. Typing a path or an id into it sets the
variant to what was typed ("local folder" for a path), and picking the variant the box already
belongs to changes nothing. Gradio 6's dropdown reports an `input` event when it only gains and loses
focus, with its unchanged value: wired to `input`, clicking the dropdown and away after typing a path
rewrote the path to the Hub id, and the label said "fp8 (official)" while a local folder was loaded.
The variant is therefore wired to `select` (a choice made in the list), and the label follows the box.

The speed modes (`ideogram_app.speed`), memory modes (`pipeline/placement.py`) and devices offered
are the ones this machine can run: `fast` needs FP8 tensor cores (CUDA compute capability 8.9 or
newer), CFG-parallel a second GPU. The estimate lists every memory mode, so the choice is informed.

The "Prompt expansion" panel sets the language model behind the Compose tab's Expand button and
`/expand` (expansion.py) under the same rule: it points the server at a URL or a folder and may
spend the operator's API key. The key is write-only: the page never receives it back.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import torch

from ideogram_app.expand import BackendError
from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.placement import MEMORY_MODES, check_memory_mode
from ideogram_app.speed import SPEED_MODES, check_speed_mode, default_speed_mode

from ..expansion import KIND_LABELS, KINDS, Expander
from ..generation import checked_size
from ..markup import code, escape
from ..model_slot import ModelSlot
from ..policy import CHANGE_MODEL, HUB_PREFIXES, REPO_ID, NotAllowedError, Policy
from ..wiring import GLUE, GPU, Components, emits
from ..zerogpu import on_zerogpu

VARIANTS: dict[str, str] = {
    "fp8 (official, ~27 GB)": "ideogram-ai/ideogram-4-fp8",
    "bf16 repackage (~54 GB)": "DiffSynth-Studio/ideogram-4-bf16-repackage",
    "nf4 (~16 GB, CUDA)": "ideogram-ai/ideogram-4-nf4",
    "local folder": "",
    "other repo id": "",
}
LOCAL, OTHER_REPO = "local folder", "other repo id"
# Which entry of pipeline/estimate.py's KNOWN_WEIGHTS sizes a variant that is not downloaded yet.
WEIGHT_FAMILY = {"fp8 (official, ~27 GB)": "fp8", "bf16 repackage (~54 GB)": "bf16", "nf4 (~16 GB, CUDA)": "nf4"}
MEMORY_HELP = ("Memory: `full`: everything on the GPU (fastest). `offload`: each part visits the GPU only while it "
               "runs (peak ≈ one transformer). `stream` (where offered): transformer blocks stream from host memory "
               "while the previous block computes. `cpu`: tiny test models and debugging. Speed: `eager` runs the "
               "modules as loaded; `exact` compiles them (same images, faster steps; the first image pays the "
               "compile); `fast` uses FP8 matrix multiplies (fastest, images differ slightly). Two GPUs: the "
               "conditional and the unconditional transformer run side by side (CFG-parallel). Gated weights need "
               "the licence accepted on the model page and `HF_TOKEN` set.")
ONE_DEVICE = ""  # the `devices` value for the pipeline's default device
CFG_PARALLEL = "cuda:0,cuda:1"
# The estimate is for one image of the size chosen in the Compose tab.
ESTIMATE_INPUTS = ["variant", "model_source", "memory", "width", "height"]
# What an operator may use; disabled for everyone else (and for everyone until the page has loaded).
EXPAND_CONTROLS = ("expand_kind", "expand_url", "expand_model", "expand_key", "expand_apply", "expand_forget_key")
CONTROLS = ("variant", "model_source", "memory", "speed_mode", "devices", "model_folder", "load_model", "unload_model",
            *EXPAND_CONTROLS)
LOAD_INPUTS = ["model_source", "memory", "speed_mode", "devices"]


def compute_device() -> torch.device:
    """The device the pipeline computes on when none is given (pipeline/placement.py's rule)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def supported_speed_modes(device: torch.device) -> tuple[str, ...]:
    """The speed modes `device` runs: `eager` and `exact` everywhere; `fast` only on a GPU with FP8
    tensor cores (compute capability 8.9: Ada, Hopper, Blackwell and newer); on ZeroGPU only `eager`."""
    if on_zerogpu():  # no torch.compile at run time there (zerogpu.py)
        return ("eager",)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        return SPEED_MODES
    return tuple(mode for mode in SPEED_MODES if mode != "fast")


def device_choices() -> dict[str, str]:
    """Label -> `devices` value: the default device, and CFG-parallel when there is a second GPU."""
    choices = {"one device": ONE_DEVICE}
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        choices["two GPUs: CFG-parallel (cuda:0 + cuda:1)"] = CFG_PARALLEL
    return choices


def variant_for(source: str) -> str:
    """The variant a source box's text belongs to, from the text alone (never from whether a path exists
    on the server, which a visitor must not learn): a published variant's id, another repo id (a hub
    prefix, or the shape owner/name), or a local folder."""
    text = (source or "").strip()
    bare = next((text[len(prefix):] for prefix in ("hf://", "huggingface://") if text.startswith(prefix)), text)
    known = next((label for label, repo in VARIANTS.items() if repo and repo == bare), None)
    if known:
        return known
    return OTHER_REPO if text.startswith(HUB_PREFIXES) or REPO_ID.match(text) else LOCAL
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
        device = compute_device()
        speeds = supported_speed_modes(device)
        devices = device_choices()
        ui.add("model_status", gr.Markdown(elem_id="model-status"))
        ui.add("model_policy", gr.Markdown(elem_id="model-policy"))
        with gr.Row():
            ui.add("variant", gr.Dropdown(list(VARIANTS), value=next(iter(VARIANTS)), label="Variant",
                                          interactive=False, elem_id="model-variant"))
            ui.add("model_source", gr.Textbox(next(iter(VARIANTS.values())), label="Repo id or local folder",
                                              interactive=False, elem_id="model-source"))
        with gr.Row():
            ui.add("memory", gr.Radio(list(MEMORY_MODES), value="full", label="Memory mode", interactive=False,
                                      elem_id="model-memory"))
            default = default_speed_mode(device)
            ui.add("speed_mode", gr.Radio(list(speeds), value=default if default in speeds else speeds[0],
                                          label="Speed mode",
                                          interactive=False, elem_id="model-speed"))
            ui.add("devices", gr.Radio([(label, value) for label, value in devices.items()], value=ONE_DEVICE,
                                       label="Devices", interactive=False, visible=len(devices) > 1,
                                       elem_id="model-devices"))
        ui.add("model_folder", gr.Dropdown([], value=None, label="Folders in the models directories",
                                           visible=bool(self.policy.models_dirs), interactive=False))
        ui.add("model_estimate", gr.Markdown(elem_id="model-estimate"))
        with gr.Row():
            ui.add("load_model", gr.Button("Load model", variant="primary", interactive=False))
            ui.add("unload_model", gr.Button("Unload", interactive=False))
        gr.Markdown(MEMORY_HELP)
        self._layout_expansion(ui)

        ui.on(ui.demo.load, self.on_page_load, ESTIMATE_INPUTS, api_visibility="private", show_progress="hidden")
        # `select`, not `input`: Gradio 6's dropdown also reports `input` when it merely gains and loses focus.
        ui.on(ui["variant"].select, self.on_variant, ["variant", "model_source"], **GLUE)
        # always_last: only the newest text counts, so an answer about older text cannot overwrite it.
        ui.on(ui["model_source"].input, self.on_source, ["model_source", "variant"],
              **{**GLUE, "trigger_mode": "always_last"})
        ui.on(ui["model_folder"].input, self.on_folder, ["model_folder"], **GLUE)
        ui.on([ui[name].change for name in ESTIMATE_INPUTS[:3]], self.on_estimate, ESTIMATE_INPUTS, **GLUE)
        ui.on(ui["load_model"].click, self.on_load_model, LOAD_INPUTS, api_visibility="private",
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
        """A new page: who may change the model, and the controls showing the model that is loaded
        (its variant, source and modes; a visitor sees a local folder's name, not its server path)."""
        operator = self.policy.is_operator(request)
        enabled = {name: gr.update(interactive=operator) for name in CONTROLS}
        enabled.update(self._expansion_form(operator))
        loaded = self.slot.loaded
        if loaded is not None:
            shown = loaded.source if operator or not loaded.local else Path(loaded.source).name
            variant, source, memory = LOCAL if loaded.local else variant_for(loaded.source), shown, loaded.memory
            enabled["variant"] = gr.update(value=variant, interactive=operator)
            enabled["model_source"] = gr.update(value=source, interactive=operator)
            enabled["memory"] = gr.update(value=memory, interactive=operator)
            if loaded.mode is not None:
                enabled["speed_mode"] = gr.update(value=loaded.mode, interactive=operator)
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
    def on_variant(self, variant: str, source: str) -> dict:
        """A variant picked: its Hub id goes into the source box, unless the box already belongs to
        that variant (a typed folder stays when "local folder" is picked again, or when the dropdown
        reports its unchanged value)."""
        if variant not in VARIANTS or variant_for(source) == variant:
            return {}
        return {"model_source": VARIANTS[variant]}

    @emits("variant")
    def on_source(self, source: str, variant: str) -> dict:
        """Text typed into the source box: the variant follows it, so the label never names a variant
        the box does not hold."""
        follows = variant_for(source)
        return {} if follows == variant else {"variant": follows}

    @emits("variant", "model_source")
    def on_folder(self, folder: str) -> dict:
        """A folder picked from the list (which only operators are given) goes into the source box."""
        return {"variant": LOCAL, "model_source": folder or ""}

    @emits("model_estimate")
    def on_estimate(self, variant: str, source: str, memory: str, width, height, request: gr.Request) -> dict:
        """Memory needed for one image in each memory mode, the chosen one first. An operator's local
        folder is measured from its weight files; for everyone else (and Hub ids) the variant's published
        sizes are used, so the estimate never tells a visitor whether a server path exists."""
        from ideogram_app.pipeline.estimate import KNOWN_WEIGHTS, estimate_memory, weight_bytes_from_files

        try:
            size = checked_size(width, height, self.limits)
            check_memory_mode(memory)
            weights = KNOWN_WEIGHTS[WEIGHT_FAMILY.get(variant, "fp8")]
            if self.policy.is_operator(request):
                target = self.policy.resolve_source(source)
                if not target.startswith(HUB_PREFIXES):
                    weights = weight_bytes_from_files(target)
            estimates = {mode: estimate_memory(weights, mode, height=size.height, width=size.width)
                         for mode in (memory, *(m for m in MEMORY_MODES if m != memory))}
        except (ValueError, OSError) as err:  # SettingsError for the size, unknown mode, unreadable headers, policy
            return {"model_estimate": f"Cannot estimate: {escape(err)}"}
        chosen = estimates.pop(memory)
        others = "".join(f"\n- {code(mode)}: {estimate.describe()}" for mode, estimate in estimates.items())
        return {"model_estimate": f"Needs {chosen.describe()} for one {size.width}×{size.height} image in "
                                  f"{code(memory)} mode. Other memory modes:{others}"}

    def checked_modes(self, speed: str, devices: str) -> tuple[str, tuple[str, ...] | None]:
        """The speed mode and devices of a load request, refused (gr.Error) unless this machine offers
        them: events can be called with any value, not only the ones on the page."""
        try:
            check_speed_mode(speed)
        except ValueError as err:
            raise gr.Error(f"Speed mode: {err}") from None
        offered = supported_speed_modes(compute_device())
        if speed not in offered:
            why = ("ZeroGPU allows no torch.compile at run time" if on_zerogpu() else
                   "it needs a GPU with FP8 tensor cores (CUDA compute capability 8.9 or newer)")
            raise gr.Error(f"Speed mode: {speed!r} is not offered here: {why}; this machine offers {', '.join(offered)}")
        choices = device_choices()
        if devices not in choices.values():
            raise gr.Error(f"Devices: {devices!r} is not offered here; choose one of "
                           f"{', '.join(repr(v) for v in choices.values())}")
        return speed, tuple(devices.split(",")) if devices else None

    @emits("model_status", "variant")
    def on_load_model(self, source: str, memory: str, speed: str, devices: str, request: gr.Request,
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
        mode, device_list = self.checked_modes(speed, devices)
        progress(0, desc=f"loading {target}")
        try:
            loaded = self.slot.load(target, memory, mode=mode, devices=device_list,
                                    status=lambda line: progress(0.9, desc=line))
        except Exception as err:  # the working model still serves (ModelSlot.load swaps only on success)
            still = " The model loaded before still serves." if self.slot.loaded else ""
            raise gr.Error(f"Could not load {source!r}: {str(err).rstrip('.')}.{still}", duration=None) from None
        return {"model_status": self.slot.status(), "variant": LOCAL if loaded.local else variant_for(target)}

    @emits("model_status")
    def on_unload_model(self, request: gr.Request) -> dict:
        try:
            self.policy.require(request, CHANGE_MODEL)
        except NotAllowedError as err:
            raise gr.Error(str(err), duration=None) from None
        self.slot.unload()
        return {"model_status": self.slot.status()}
