import pytest
import torch

from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.pipeline.estimate import KNOWN_WEIGHTS, choose_fp8, estimate_memory, weight_bytes_from_files
from ideogram_app.pipeline.pipeline import Ideogram4Pipeline
from ideogram_app.pipeline.placement import MemoryPlan


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


@pytest.mark.parametrize("layout,fp8", [("fp8", "keep"), ("fp8", "dequantize"), ("split", "keep")])
def test_weight_bytes_from_headers_match_the_loaded_modules(tiny_repos, layout, fp8):
    dtype = torch.float32
    estimate = weight_bytes_from_files(tiny_repos[layout], fp8=fp8, dtype=dtype)
    pipe = Ideogram4Pipeline.from_pretrained(tiny_repos[layout], torch_dtype=dtype, memory="cpu", fp8=fp8)
    loaded = {
        "transformer": module_bytes(pipe.transformer),
        "unconditional_transformer": module_bytes(pipe.unconditional_transformer),
        "text_encoder": module_bytes(pipe.text_encoder),
        "vae": module_bytes(pipe.vae),
    }
    assert set(estimate) == set(loaded)
    for name in loaded:
        assert estimate[name] == pytest.approx(loaded[name], rel=0.02), name
    if layout == "fp8":
        smaller = weight_bytes_from_files(tiny_repos[layout], fp8="keep", dtype=dtype)["transformer"]
        larger = weight_bytes_from_files(tiny_repos[layout], fp8="dequantize", dtype=dtype)["transformer"]
        assert smaller < larger


def test_estimates_follow_the_modes():
    weights = KNOWN_WEIGHTS["fp8"]
    full, offload, cpu = (estimate_memory(weights, mode) for mode in ("full", "offload", "cpu"))
    total = sum(weights.values())
    assert total < full.device_bytes < total + 2 * 10**9  # weights plus < 2 GB of activations at 1024²
    assert weights["transformer"] < offload.device_bytes < full.device_bytes / 2
    assert offload.host_bytes == total
    assert cpu.device_bytes == 0 and cpu.host_bytes == full.device_bytes
    assert estimate_memory(weights, "full", 2048, 2048).device_bytes > full.device_bytes
    assert full.describe() == f"about {full.device_bytes / 1e9:.1f} GB of GPU memory and 0.0 GB of RAM"
    assert cpu.describe().startswith("CPU only: about 27.")


def test_fp8_auto_keeps_fp8_unless_a_full_gpu_plan_has_room():
    assert choose_fp8(MemoryPlan.create("cpu"), 10) == "keep"
    assert choose_fp8(MemoryPlan.create("offload", "cuda"), 10) == "keep"
    # fast mode's FP8 GEMMs take the stored e4m3 weights: kept even in full mode on a GPU (asks no GPU)
    assert choose_fp8(MemoryPlan.on(torch.device("cuda")), 10, "fast") == "keep"


def test_auto_fp8_on_the_cpu_loads_fp8_linears(tiny_repos):
    pipe = Ideogram4Pipeline.from_pretrained(tiny_repos["fp8"], torch_dtype=torch.float32, memory="cpu")
    assert any(isinstance(m, Fp8Linear) for m in pipe.transformer.modules())
    with pytest.raises(ValueError, match="fp8 mode 'fast' is unknown; choose one of auto, keep, dequantize"):
        Ideogram4Pipeline.from_pretrained(tiny_repos["fp8"], memory="cpu", fp8="fast")


def test_estimates_refuse_an_unknown_mode_with_the_plans_message():
    with pytest.raises(ValueError, match="memory mode 'fast' is unknown; choose one of full, offload, cpu, stream$"):
        estimate_memory(KNOWN_WEIGHTS["fp8"], "fast")


def test_stream_estimate_of_the_released_repos_is_under_8_gb():
    """Nothing is resident by default: the DiT phase holds the running DiT's rest, three streamed blocks
    (the running one and two prefetched), activations and one Linear widened to fp32 twice."""
    fp8 = KNOWN_WEIGHTS["fp8"]
    block = fp8["transformer"] * 264_278_528 // 9_279_288_448  # parameters of one block / of the DiT
    rest = fp8["transformer"] - 34 * block
    activations = (1024 + 4096) * (8 * 4608 + 3 * 12288) * 2  # residual stream and SwiGLU, 1024 text tokens
    widened = 12288 * 4608 * 4 * 2
    stream = estimate_memory(fp8, "stream")
    assert stream.device_bytes == rest + 3 * block + activations + widened
    assert stream.device_bytes < 8 * 10**9 and stream.host_bytes == sum(fp8.values())
    assert estimate_memory(fp8, "stream", 2048, 2048).device_bytes < 8 * 10**9  # the VAE phase leads there
    for layout in ("fp8", "bf16", "nf4"):
        weights = KNOWN_WEIGHTS[layout]
        assert estimate_memory(weights, "stream").device_bytes < estimate_memory(weights, "offload").device_bytes
    assert estimate_memory(KNOWN_WEIGHTS["bf16"], "stream").device_bytes < 8 * 10**9
