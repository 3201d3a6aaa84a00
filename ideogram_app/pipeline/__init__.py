"""Text-to-image and img2img pipeline around the Ideogram 4 model stack.

Names are imported lazily (PEP 562) so that `ideogram_app.pipeline.sizes` or `.metadata` can be used
without loading torch and transformers.
"""
from importlib import import_module

_EXPORTS = {
    "ModelSourceError": "hub", "resolve_model": "hub",
    "KNOWN_WEIGHTS": "estimate", "MemoryEstimate": "estimate", "estimate_memory": "estimate",
    "weight_bytes_from_files": "estimate",
    "MEMORY_MODES": "placement", "MemoryPlan": "placement",
    "NoImageMetadataError": "metadata", "read_image_metadata": "metadata", "save_png": "metadata",
    "ModelConfig": "model_config",
    "GenerationRequest": "pipeline", "Ideogram4Pipeline": "pipeline",
    "InvalidCaptionError": "prompt", "prepare_prompt": "prompt",
    "GenerationCancelled": "sampling", "PRESETS": "sampling", "denoise": "sampling", "schedule": "sampling",
    "GenerationSettings": "settings", "SettingsError": "settings",
    "ASPECT_PRESETS": "sizes", "SizeError": "sizes", "check_size": "sizes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
