"""LoRA adapters for the Ideogram 4 DiT: read every published key layout, apply at inference
(unmerged beside bf16 / fp8-kept / NF4 linears, or merged into float weights), write the native and
diffusers layouts. See docs/lora.md."""
from .apply import LoraReport, apply_lora, config_targets, loaded, lora_targets, remove, set_scale
from .formats import LoraFile, LoraModule, read_lora
from .read import RejectedLora, UnreadableLora
from .write import write_diffusers, write_native

__all__ = ["LoraFile", "LoraModule", "LoraReport", "RejectedLora", "UnreadableLora", "apply_lora", "config_targets",
           "loaded", "lora_targets", "read_lora", "remove", "set_scale", "write_diffusers", "write_native"]
