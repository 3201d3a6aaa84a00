"""Prompt expansion and auto-captioning: a plain-text idea or an image -> a verified caption with
boxes, from an OpenAI-compatible server or a local causal LM under schema-constrained decoding
(docs/expand.md). The caption core never imports this package; torch loads only with the local
backend."""
from .bounds import CaptionBounds
from .captioner import Backend, describe, expand, make_backend
from .openai_compat import OpenAIBackend
from .result import BackendError, CaptionRejected, ExpandError, Expansion, InputError, Repair

__all__ = ["Backend", "BackendError", "CaptionBounds", "CaptionRejected", "ExpandError", "Expansion", "InputError",
           "OpenAIBackend", "Repair", "describe", "expand", "make_backend"]
