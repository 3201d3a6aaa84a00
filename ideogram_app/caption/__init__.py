"""Structured-caption core: model, parser, canonical serializer, verifier, bbox conversion,
layout preview and templates. Imports no torch and no gradio."""
from .bbox import bbox_to_pixels, pixels_to_bbox
from .issues import CaptionFormatError, CaptionSyntaxError, Issue
from .model import Caption, Element, PlainText, Style
from .parse import parse
from .render import render_layout
from .serialize import to_json
from .templates import list_templates, load_template
from .verify import verify

__all__ = ["Caption", "CaptionFormatError", "CaptionSyntaxError", "Element", "Issue", "PlainText", "Style",
           "bbox_to_pixels", "list_templates", "load_template", "parse", "pixels_to_bbox", "render_layout",
           "to_json", "verify"]
