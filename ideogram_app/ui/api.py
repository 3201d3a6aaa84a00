"""The four public endpoints: `/generate`, `/validate_caption`, `/format_caption`, `/render_layout`.

They take and return plain values, so `gradio_client` and MCP agents can call them; type hints and
docstrings become the API page and the MCP tool descriptions (Gradio reads the hints at run time,
so this module must not use postponed annotations). Bad input raises `gr.Error` with a message
that says what is wrong and where, before any heavy work. The generation parameters are
`GenerationSettings` fields under their own names, so the settings' messages name them as they
are; their defaults are the settings' defaults. (Issue paths are returned as `json_path`:
gradio_client would take a dict key named `path` for a file to download.)
"""
import gradio as gr
from gradio.data_classes import FileData

from ideogram_app.caption import (Caption, CaptionFormatError, CaptionSyntaxError, PlainText, parse, render_layout,
                                  to_json, verify)
from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.sampling import PRESETS
from ideogram_app.pipeline.settings import RANDOM_SEED, SEED_MAX, GenerationSettings, SettingsError
from ideogram_app.pipeline.sizes import MULTIPLE, RECOMMENDED_MAX, RECOMMENDED_MIN

from .generation import DEFAULTS, checked_size, run_generation
from .model_slot import ModelNotLoadedError, ModelSlot
from .results import save_preview, save_results
from .wiring import GPU


def caption_or_error(caption: str) -> Caption:
    """API input -> Caption, or gr.Error saying exactly what is wrong and where."""
    if not isinstance(caption, str) or not caption.strip():
        raise gr.Error("caption is empty; pass a JSON caption (see /format_caption) as a string")
    try:
        parsed = parse(caption)
    except CaptionSyntaxError as err:
        raise gr.Error(f"caption is not valid JSON: line {err.line}, column {err.column}: {err.reason}") from None
    except CaptionFormatError as err:
        raise gr.Error("caption is not a valid caption: " + "; ".join(str(i) for i in err.issues)) from None
    if isinstance(parsed, PlainText):
        raise gr.Error("caption is plain text; this endpoint needs a JSON caption with compositional_deconstruction")
    return parsed


class PublicApi:
    def __init__(self, slot: ModelSlot, limits: Limits = DEFAULT_LIMITS):
        self.slot = slot
        self.limits = limits

    def register(self) -> None:
        """Add the endpoints to the Blocks being built (generation joins the GPU concurrency group)."""
        gr.api(self.generate, api_name="generate", concurrency_id=GPU, concurrency_limit=1)
        gr.api(self.validate_caption, api_name="validate_caption", concurrency_limit=4)
        gr.api(self.format_caption, api_name="format_caption", concurrency_limit=4)
        gr.api(self.render_layout, api_name="render_layout", concurrency_limit=4)

    def generate(self, caption: str, width: int = DEFAULTS["width"], height: int = DEFAULTS["height"],
                 preset: str = DEFAULTS["preset"], seed: int = RANDOM_SEED,
                 num_images: int = DEFAULTS["num_images"]) -> tuple[list[FileData], dict]:
        """Generate Ideogram 4 images from a caption.

        Args:
            caption: a JSON caption (compositional_deconstruction with elements; bbox = [y_min, x_min, y_max, x_max] on 0-1000) or a plain-text prompt.
            width: image width in pixels, a multiple of {multiple} ({recommended_min}-{recommended_max} recommended; the server's limits are named when exceeded).
            height: image height in pixels, a multiple of {multiple} ({recommended_min}-{recommended_max} recommended).
            preset: the sampler preset: {presets}.
            seed: random seed, 0-{seed_max}; {random_seed} picks one.
            num_images: how many images; they use seeds seed, seed+1, ...

        Returns:
            The PNG files (caption and settings in their metadata) and the settings used.
        """
        if not isinstance(caption, str) or not caption.strip():
            raise gr.Error("caption is empty; pass a JSON caption or a plain-text prompt")
        try:
            settings = GenerationSettings(width=width, height=height, preset=preset, seed=seed, num_images=num_images,
                                          limits=self.limits)
            pipe = self.slot.require().pipe
            request = pipe.prepare(caption, settings)  # caption, token count
            images = run_generation(pipe, request)
        except (ValueError, ModelNotLoadedError) as err:  # settings, caption, token count, no model
            raise gr.Error(str(err)) from None
        results = save_results(images)
        return [FileData(path=r["path"]) for r in results], {"prompt": request.prompt.text,
                                                             "images": [r["settings"] for r in results]}

    generate.__doc__ = generate.__doc__.format(
        multiple=MULTIPLE, recommended_min=RECOMMENDED_MIN, recommended_max=RECOMMENDED_MAX, seed_max=SEED_MAX,
        random_seed=RANDOM_SEED,
        presets=", ".join(f'"{name}" ({p.steps} steps{", the default" if name == DEFAULTS["preset"] else ""})'
                          for name, p in PRESETS.items()))

    def validate_caption(self, caption: str) -> list[dict]:
        """Check a caption against the Ideogram 4 caption rules (the official CaptionVerifier's and more).

        Args:
            caption: the caption as JSON text (plain text gets a single warning).

        Returns:
            One entry per issue with code, json_path (such as compositional_deconstruction.elements[0].bbox; "" is the whole caption), message and severity ("error" or "warning"); an empty list means valid and canonical.
        """
        if not isinstance(caption, str):
            raise gr.Error("caption must be a string of JSON text")
        return [{"code": i.code, "json_path": i.path, "message": i.message, "severity": i.severity}
                for i in verify(caption)]

    def format_caption(self, caption: str) -> str:
        """Canonicalise a caption: official key order, compact separators, literal non-ASCII, upper-case hex.

        Args:
            caption: the caption as JSON text (pretty-printed, reordered or double-encoded is fine).

        Returns:
            The canonical compact JSON string the model is given.
        """
        return to_json(caption_or_error(caption))

    def render_layout(self, caption: str, width: int = DEFAULTS["width"], height: int = DEFAULTS["height"]) -> FileData:
        """Draw a caption's boxes as a layout preview PNG (obj boxes blue, text boxes red, labelled).

        Args:
            caption: the caption as JSON text.
            width: preview width in pixels, within the limits /generate accepts.
            height: preview height in pixels, within the limits /generate accepts.

        Returns:
            The preview PNG.
        """
        parsed = caption_or_error(caption)
        try:
            size = checked_size(width, height, self.limits)
        except SettingsError as err:
            raise gr.Error(str(err)) from None
        return FileData(path=save_preview(render_layout(parsed, size.width, size.height)))
