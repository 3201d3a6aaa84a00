"""Text-to-image and img2img pipeline around the Ideogram 4 model stack."""
from .hub import ModelSourceError, resolve_model
from .memory import MEMORY_MODES, MemoryEstimate, MemoryPlan, estimate_memory, weight_bytes_from_files, KNOWN_WEIGHTS
from .metadata import NoImageMetadataError, read_image_metadata, save_png
from .model_config import ModelConfig
from .pipeline import GenerationCancelled, GenerationRequest, Ideogram4Pipeline
from .prompt import InvalidCaptionError, prepare_prompt
from .sampling import PRESETS, resolve_sampler, schedule
from .sizes import ASPECT_PRESETS, SizeError, check_size

__all__ = [
    "ASPECT_PRESETS", "GenerationCancelled", "GenerationRequest", "Ideogram4Pipeline", "InvalidCaptionError",
    "KNOWN_WEIGHTS", "MEMORY_MODES", "MemoryEstimate", "MemoryPlan", "ModelConfig", "ModelSourceError",
    "NoImageMetadataError", "PRESETS", "SizeError", "check_size", "estimate_memory", "prepare_prompt",
    "read_image_metadata", "resolve_model", "resolve_sampler", "save_png", "schedule", "weight_bytes_from_files",
]
