"""Memory modes on a real CUDA device (run on the GPU machine; skipped elsewhere)."""
import time

import pytest
import torch

from ideogram_app.pipeline.pipeline import Ideogram4Pipeline

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
FAST = dict(width=80, height=64, preset="turbo", num_inference_steps=3, seed=5)


def devices_during_forward(pipe):
    seen = {}

    def recorder(name):
        def hook(module, args):
            seen.setdefault(name, next(module.parameters()).device.type)
        return hook

    handles = [
        module.register_forward_pre_hook(recorder(name))
        for name, module in [("transformer", pipe.transformer), ("unconditional", pipe.unconditional_transformer),
                             ("vae.decoder", pipe.vae.decoder)]
    ]
    return seen, handles


def param_device(module):
    return next(module.parameters()).device.type


@pytest.mark.parametrize("layout", ["fp8", "bf16"])
def test_full_and_offload_agree_and_place_components(tiny_repos, layout):
    full = Ideogram4Pipeline.from_pretrained(tiny_repos[layout], device="cuda", memory="full")
    offload = Ideogram4Pipeline.from_pretrained(tiny_repos[layout], device="cuda", memory="offload")
    assert param_device(full.transformer) == "cuda" and param_device(offload.transformer) == "cpu"
    assert all(t.is_pinned() for t in (*offload.transformer.parameters(), *offload.transformer.buffers()))
    seen, handles = devices_during_forward(offload)
    a = full("a cat", output_type="latent", **FAST)
    b = offload("a cat", output_type="latent", **FAST)
    image = offload("a cat", **FAST)
    for h in handles:
        h.remove()
    assert seen == {"transformer": "cuda", "unconditional": "cuda", "vae.decoder": "cuda"}
    for module in (offload.transformer, offload.unconditional_transformer, offload.text_encoder, offload.vae):
        assert param_device(module) == "cpu"  # back in RAM after use
    assert torch.equal(a, b)
    assert image.size == (80, 64)


def test_cuda_matches_cpu_in_float32(tiny_repos):
    cpu = Ideogram4Pipeline.from_pretrained(tiny_repos["bf16"], torch_dtype=torch.float32, memory="cpu")
    gpu = Ideogram4Pipeline.from_pretrained(tiny_repos["bf16"], torch_dtype=torch.float32, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    a = cpu("a cat", output_type="latent", **FAST)
    b = gpu("a cat", output_type="latent", **FAST).cpu()
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), (a - b).abs().max()


def test_auto_fp8_widens_in_full_mode_on_a_roomy_gpu_and_keeps_when_offloading(tiny_repos):
    from ideogram_app.model.fp8 import Fp8Linear

    full = Ideogram4Pipeline.from_pretrained(tiny_repos["fp8"], device="cuda", memory="full")
    offload = Ideogram4Pipeline.from_pretrained(tiny_repos["fp8"], device="cuda", memory="offload")
    assert not any(isinstance(m, Fp8Linear) for m in full.transformer.modules())
    assert any(isinstance(m, Fp8Linear) for m in offload.transformer.modules())


def build_real_size(factory):
    """A released-size module with random bf16 weights, made on the GPU (no checkpoint)."""
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cuda").to(torch.bfloat16)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    return module.eval().requires_grad_(False)


@pytest.mark.parametrize("memory", ["full", "offload"])
def test_real_sizes_fit_the_memory_estimate(tiny_repos, memory):
    """Released shapes (two 9.28 B DiTs, the 7.57 B Qwen3-VL text model, the FLUX.2 VAE) with random
    bf16 weights at 1024²: the measured peak must match estimate_memory, and offload must need far less."""
    from transformers import Qwen3VLTextConfig, Qwen3VLTextModel

    from ideogram_app.model.flux2_vae import Flux2VAE, Flux2VAEConfig
    from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
    from ideogram_app.model.prompt_tokenizer import PromptTokenizer
    from ideogram_app.loading.text_encoder import QWEN3_VL_8B_TEXT_CONFIG
    from ideogram_app.model.text_encoder import Ideogram4TextEncoder
    from ideogram_app.pipeline.estimate import estimate_memory
    from ideogram_app.pipeline.placement import MemoryPlan

    plan = MemoryPlan.create(memory, "cuda")
    tokenizer = PromptTokenizer(tiny_repos["bf16"] / "tokenizer")
    parts = {
        "transformer": build_real_size(lambda: Ideogram4DiT(Ideogram4Config())),
        "unconditional_transformer": build_real_size(lambda: Ideogram4DiT(Ideogram4Config())),
        "text_encoder": Ideogram4TextEncoder(
            build_real_size(lambda: Qwen3VLTextModel(Qwen3VLTextConfig(**QWEN3_VL_8B_TEXT_CONFIG))), tokenizer),
        "vae": build_real_size(lambda: Flux2VAE(Flux2VAEConfig())),
    }
    for module in parts.values():
        plan.place(module)
    pipe = Ideogram4Pipeline(parts["transformer"], parts["text_encoder"], tokenizer, parts["vae"],
                             parts["unconditional_transformer"], plan)
    weights = {name: sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
               for name, m in parts.items()}
    prompt = " ".join(f"a poster of {i} red circles, blue squares and the word HELLO." for i in range(25))
    tokens = tokenizer.count(prompt)
    steps = 4 if memory == "full" else 2
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    marks = []

    def on_step(step, total):
        torch.cuda.synchronize()
        marks.append(time.perf_counter())

    start = time.perf_counter()
    image = pipe(prompt, width=1024, height=1024, seed=0, num_inference_steps=steps, callback=on_step)
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    estimate = estimate_memory(weights, memory, 1024, 1024, text_tokens=tokens).device_bytes
    per_step = [b - a for a, b in zip(marks, marks[1:])]
    print(f"\n[{memory}] {tokens} text tokens, weights {sum(weights.values()) / 1e9:.2f} GB; "
          f"peak {peak / 1e9:.2f} GB vs estimate {estimate / 1e9:.2f} GB; "
          f"steps after the first {[round(s, 3) for s in per_step]} s; first call {total:.2f} s")
    assert image.size == (1024, 1024)
    assert abs(peak - estimate) <= 0.25 * estimate
