"""The four public endpoints: `/generate`, `/validate_caption`, `/format_caption`, `/render_layout`.

They take and return plain values, so `gradio_client` and MCP agents can call them; type hints and
docstrings become the API page and the MCP tool descriptions (Gradio reads the hints at run time,
so this module must not use postponed annotations). Bad input raises `gr.Error` with a message
that says what is wrong and where, before any heavy work. (Issue paths are returned as
`json_path`: gradio_client would take a dict key named `path` for a file to download.)
"""
import gradio as gr
from gradio.data_classes import FileData

from ideogram_app.caption import (Caption, CaptionFormatError, CaptionSyntaxError, PlainText, parse, render_layout,
                                  to_json, verify)

from .generation import check_prompt, check_settings, resolve_seed, run_generation, save_results
from .handlers import save_preview, size_or_error
from .model_slot import ModelNotLoadedError, ModelSlot


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
    def __init__(self, slot: ModelSlot):
        self.slot = slot

    def generate(self, caption: str, width: int = 1024, height: int = 1024, preset: str = "default",
                 seed: int = -1, num_images: int = 1) -> tuple[list[FileData], dict]:
        """Generate Ideogram 4 images from a caption.

        Args:
            caption: a JSON caption (compositional_deconstruction with elements; bbox = [y_min, x_min, y_max, x_max] on 0-1000) or a plain-text prompt.
            width: image width in pixels, a multiple of 16 (256-2048 recommended).
            height: image height in pixels, a multiple of 16 (256-2048 recommended).
            preset: "quality" (48 steps), "default" (20) or "turbo" (12).
            seed: random seed; -1 picks one.
            num_images: how many images (1-4); they use seeds seed, seed+1, ...

        Returns:
            The PNG files (caption and settings in their metadata) and the settings used.
        """
        if not isinstance(caption, str) or not caption.strip():
            raise gr.Error("caption is empty; pass a JSON caption or a plain-text prompt")
        size_or_error(width, height)
        try:
            settings, _ = check_settings(preset, width, height, resolve_seed(seed, False), num_images, None, 1.0)
            prompt = check_prompt(caption, self.slot.token_counter())
            images = run_generation(self.slot, prompt, settings)
        except (ValueError, ModelNotLoadedError) as err:  # settings, caption, size, token count, no model
            raise gr.Error(str(err)) from None
        results = save_results(images)
        return [FileData(path=r["path"]) for r in results], {"prompt": prompt, "images": [r["settings"] for r in results]}

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

    def render_layout(self, caption: str, width: int = 1024, height: int = 1024) -> FileData:
        """Draw a caption's boxes as a layout preview PNG (obj boxes blue, text boxes red, labelled).

        Args:
            caption: the caption as JSON text.
            width: preview width in pixels, a multiple of 16.
            height: preview height in pixels, a multiple of 16.

        Returns:
            The preview PNG.
        """
        parsed = caption_or_error(caption)
        w, h = size_or_error(width, height)
        return FileData(path=save_preview(render_layout(parsed, w, h)))
