"""The five public endpoints: `/generate`, `/expand`, `/validate_caption`, `/format_caption`,
`/render_layout`.

They take and return plain values, so `gradio_client` and MCP agents can call them; type hints and
docstrings become the API page and the MCP tool descriptions (Gradio reads the hints at run time,
so this module must not use postponed annotations). The generation parameters are
`GenerationSettings` fields under their own names, so the settings' messages name them as they
are; their defaults are the settings' defaults. `loras` names files of the server's LoRA folder
only (loras.py), never a path. (Issue paths are returned as `json_path`:
gradio_client would take a dict key named `path` for a file to download.) `/expand` uses the
server's expansion backend (expansion.py, set by an operator); its messages name neither the
server's URL nor its paths.

Every call is checked before any work, cheapest first: the caption's type, size in characters and
characters (`checked_caption`), then sizes, seeds and counts (`GenerationSettings`, `Limits`), then
the model, then parsing and tokenizing. Each endpoint is registered through `_guarded`: a refused
request raises `gr.Error` with its message, and anything unexpected (a bug, running out of memory)
is logged and reported as what failed and how, so no error reaches a client without a message.
Messages are plain text (API clients are not browsers), with lone surrogates replaced so that the
response can be encoded.
"""
import functools
import logging

import gradio as gr
from gradio.data_classes import FileData

from ideogram_app.caption import (Caption, CaptionFormatError, CaptionSyntaxError, PlainText, parse, render_layout,
                                  to_json, verify)
from ideogram_app.expand import ExpandError
from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.sampling import PRESETS
from ideogram_app.pipeline.settings import IMG2IMG_STRENGTH, RANDOM_SEED, SEED_MAX, GenerationSettings
from ideogram_app.pipeline.sizes import MULTIPLE, RECOMMENDED_MAX, RECOMMENDED_MIN
from ideogram_app.speed import SPEED_MODES, check_speed_mode

from .expansion import Expander
from .generation import DEFAULTS, JSON_TYPES, GenerationFailed, checked_caption, checked_size, generate_images
from .history import NotYourResult, owned_result
from .loras import MAX_LORAS, SCALE_MAX, SCALE_MIN, parse_lora_args
from .model_slot import ModelNotLoadedError, ModelSlot
from .results import API_FOLDER, owner_folder, results_dir, save_preview, save_results
from .wiring import GPU, describe_failure, json_safe

MAX_MESSAGE_CHARS = 2000  # a message quoting a 300-digit number is still one readable line
log = logging.getLogger(__name__)


def caption_or_error(caption: str, limits: Limits) -> Caption:
    """API input -> Caption, or gr.Error saying exactly what is wrong and where."""
    try:
        parsed = parse(checked_caption(caption, limits))
    except CaptionSyntaxError as err:
        raise gr.Error(f"caption is not valid JSON: line {err.line}, column {err.column}: {err.reason}") from None
    except CaptionFormatError as err:
        raise gr.Error("caption is not a valid caption: " + "; ".join(str(i) for i in err.issues)) from None
    except ValueError as err:  # type, size, characters
        raise gr.Error(str(err)) from None
    if isinstance(parsed, PlainText):
        raise gr.Error("caption is plain text; this endpoint needs a JSON caption with compositional_deconstruction")
    return parsed


def _plain(message: str) -> str:
    message = json_safe(message)
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def _guarded(endpoint):
    """`endpoint` as registered: its refusals keep their message, anything else is described."""
    @functools.wraps(endpoint)  # the signature, hints and docstring stay the endpoint's
    def guarded(*args, **kwargs):
        try:
            return json_safe(endpoint(*args, **kwargs))
        except gr.Error as err:
            raise gr.Error(_plain(err.message), duration=err.duration, print_exception=False) from None
        except Exception as err:
            log.exception("/%s failed", endpoint.__name__)
            raise gr.Error(_plain(describe_failure(f"/{endpoint.__name__}", err)), print_exception=False) from None

    return guarded


class PublicApi:
    def __init__(self, slot: ModelSlot, limits: Limits = DEFAULT_LIMITS, expander: Expander | None = None):
        self.slot = slot
        self.limits = limits
        self.expander = expander if expander is not None else Expander()

    def register(self) -> None:
        """Add the endpoints to the Blocks being built (generation joins the GPU concurrency group)."""
        gr.api(_guarded(self.generate), api_name="generate", concurrency_id=GPU, concurrency_limit=1)
        # The GPU group: a local language model is not thread-safe and shares the GPU (expansion.py).
        gr.api(_guarded(self.expand), api_name="expand", concurrency_id=GPU, concurrency_limit=1)
        gr.api(_guarded(self.validate_caption), api_name="validate_caption", concurrency_limit=4)
        gr.api(_guarded(self.format_caption), api_name="format_caption", concurrency_limit=4)
        gr.api(_guarded(self.render_layout), api_name="render_layout", concurrency_limit=4)

    def generate(self, caption: str, width: int = DEFAULTS["width"], height: int = DEFAULTS["height"],
                 preset: str = DEFAULTS["preset"], seed: int = RANDOM_SEED,
                 num_images: int = DEFAULTS["num_images"], loras: list[str] | None = None,
                 input_image: str | None = None, denoising_strength: float | None = None,
                 edit_region: list[int] | None = None, mode: str | None = None,
                 request: gr.Request = None) -> tuple[list[FileData], dict]:
        """Generate Ideogram 4 images from a caption.

        Args:
            caption: a JSON caption (compositional_deconstruction with elements; bbox = [y_min, x_min, y_max, x_max] on 0-1000) or a plain-text prompt.
            width: image width in pixels, a multiple of {multiple} ({recommended_min}-{recommended_max} recommended; the server's limits are named when exceeded).
            height: image height in pixels, a multiple of {multiple} ({recommended_min}-{recommended_max} recommended).
            preset: the sampler preset: {presets}.
            seed: random seed, 0-{seed_max}; {random_seed} picks one.
            num_images: how many images; they use seeds seed, seed+1, ...
            loras: optional LoRAs from the server's LoRA folder as "file.safetensors:scale" strings (scale {scale_min:g} to {scale_max:g}, 1 when omitted), at most {max_loras}; an unknown name is refused with the list of available files.
            input_image: optional file name of one of your earlier /generate results on this server, as returned (e.g. "ideogram-0123456789ab.png"): img2img from it, or a region edit with edit_region.
            denoising_strength: how much of input_image is redrawn, in (0, 1]; {img2img_strength} when omitted with input_image.
            edit_region: optional box [y_min, x_min, y_max, x_max] on 0-1000 (with input_image): regenerate only this box and keep the rest of the image unchanged.
            mode: optional speed mode the images must be made in ({speed_modes}); the server's model runs in the one it was loaded with (each image's metadata names it), and asking for another is refused with that mode named.

        Returns:
            The PNG files (caption and settings in their metadata) and the settings used.
        """
        username = getattr(request, "username", None)
        folder = results_dir(owner_folder(username) if username else API_FOLDER)
        try:
            caption = checked_caption(caption, self.limits)
            source = self._own_result(folder, input_image)
            settings = GenerationSettings(width=width, height=height, preset=preset, seed=seed, num_images=num_images,
                                          input_image=source, denoising_strength=denoising_strength,
                                          edit_region=edit_region, limits=self.limits)
            chosen = parse_lora_args(loras)
            pipe = self.slot.require().pipe
            _check_mode(mode, pipe.mode)
            prepared = pipe.prepare(caption, settings)  # caption, token count
            images = generate_images(pipe, prepared, loras=chosen)
        except (ValueError, ModelNotLoadedError, GenerationFailed) as err:  # input, no model, out of memory
            raise gr.Error(str(err)) from None
        results = save_results(images, folder)
        return [FileData(path=r["path"]) for r in results], {"prompt": prepared.prompt.text,
                                                             "images": [r["settings"] for r in results]}

    generate.__doc__ = generate.__doc__.format(
        multiple=MULTIPLE, recommended_min=RECOMMENDED_MIN, recommended_max=RECOMMENDED_MAX, seed_max=SEED_MAX,
        random_seed=RANDOM_SEED, img2img_strength=IMG2IMG_STRENGTH, scale_min=SCALE_MIN, scale_max=SCALE_MAX,
        max_loras=MAX_LORAS, speed_modes=", ".join(f'"{m}"' for m in SPEED_MODES),
        presets=", ".join(f'"{name}" ({p.steps} steps{", the default" if name == DEFAULTS["preset"] else ""})'
                          for name, p in PRESETS.items()))

    @staticmethod
    def _own_result(folder, name) -> str | None:
        """`input_image` of /generate: the name of a result in the caller's own folder (never a path)."""
        if name is None or name == "":
            return None
        if not isinstance(name, str):
            raise ValueError(f"input_image must be the file name of one of your results, got "
                             f"{JSON_TYPES.get(type(name), 'another type')}")
        try:
            return str(owned_result(folder, folder / name))
        except NotYourResult:
            raise ValueError(f"input_image {name[:80]!r} is not one of your results on this server; pass the file "
                             "name an earlier /generate call returned (e.g. ideogram-0123456789ab.png)") from None

    def expand(self, idea: str, width: int = DEFAULTS["width"], height: int = DEFAULTS["height"],
               keep: str | None = None) -> tuple[str, dict]:
        """Expand a short plain-text idea into a complete caption with boxes, written by the server's language model and checked by the caption verifier.

        Args:
            idea: what the image should show, in a few words; every string in double quotes becomes a text element with exactly that text.
            width: the image width in pixels the boxes are fitted to, within the limits /generate accepts.
            height: the image height in pixels, within the limits /generate accepts.
            keep: optional current caption (JSON text); its elements come back unchanged, text and box included.

        Returns:
            The canonical caption JSON, and {"repairs": [{code, json_path, message}], "warnings": [{code, json_path, message}], "attempts": 1 or 2}: what was changed in the model's answer, the verifier's remaining warnings, and whether the model was asked twice.
        """
        if not isinstance(idea, str):
            raise gr.Error(f"idea must be a string of text, got {JSON_TYPES.get(type(idea), 'another type')}")
        if len(idea) > self.limits.max_caption_chars:
            raise gr.Error(f"idea is {len(idea):,} characters long; at most {self.limits.max_caption_chars:,} are "
                           "accepted")
        try:
            size = checked_size(width, height, self.limits)
        except ValueError as err:  # SettingsError
            raise gr.Error(str(err)) from None
        try:
            kept = caption_or_error(keep, self.limits) if keep is not None and keep != "" else None
        except gr.Error as err:
            raise gr.Error(f"keep: {err.message}") from None
        try:
            result = self.expander.expand(idea, size.width, size.height, keep=kept)
        except ExpandError as err:
            raise gr.Error(self.expander.message(err, detail=False)) from None
        return result.json, {
            "repairs": [{"code": r.code, "json_path": r.path, "message": r.message} for r in result.repairs],
            "warnings": [{"code": w.code, "json_path": w.path, "message": w.message} for w in result.warnings],
            "attempts": result.attempts}

    def validate_caption(self, caption: str) -> list[dict]:
        """Check a caption against the Ideogram 4 caption rules (the official CaptionVerifier's and more).

        Args:
            caption: the caption as JSON text (plain text gets a single warning).

        Returns:
            One entry per issue with code, json_path (such as compositional_deconstruction.elements[0].bbox; "" is the whole caption), message and severity ("error" or "warning"); an empty list means valid and canonical.
        """
        if not isinstance(caption, str):
            raise gr.Error(f"caption must be a string of JSON text, got {JSON_TYPES.get(type(caption), 'another type')}")
        try:
            self.limits.check_caption_chars(caption)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return [{"code": i.code, "json_path": i.path, "message": i.message, "severity": i.severity}
                for i in verify(caption)]

    def format_caption(self, caption: str) -> str:
        """Canonicalise a caption: official key order, compact separators, literal non-ASCII, upper-case hex.

        Args:
            caption: the caption as JSON text (pretty-printed, reordered or double-encoded is fine).

        Returns:
            The canonical compact JSON string the model is given.
        """
        return to_json(caption_or_error(caption, self.limits))

    def render_layout(self, caption: str, width: int = DEFAULTS["width"], height: int = DEFAULTS["height"]) -> FileData:
        """Draw a caption's boxes as a layout preview PNG (obj boxes blue, text boxes red, labelled).

        Args:
            caption: the caption as JSON text.
            width: preview width in pixels, within the limits /generate accepts.
            height: preview height in pixels, within the limits /generate accepts.

        Returns:
            The preview PNG.
        """
        try:
            checked_caption(caption, self.limits)
            size = checked_size(width, height, self.limits)
        except ValueError as err:  # SettingsError for the size
            raise gr.Error(str(err)) from None
        parsed = caption_or_error(caption, self.limits)
        return FileData(path=save_preview(render_layout(parsed, size.width, size.height)))


def _check_mode(asked: object, loaded: str) -> None:
    """/generate's `mode`: a speed mode is chosen when the model loads (compiling, FP8 conversion), so
    a request may only name the one the server runs; results must not silently differ from what the
    caller asked for."""
    if asked is None or asked == "":
        return
    check_speed_mode(asked)
    if asked != loaded:
        raise ValueError(f"mode {asked!r}: this server's model runs in {loaded!r} mode (chosen when it was loaded); "
                         f"omit mode or ask for {loaded!r}")
