"""Memory modes on a real CUDA device (run on the GPU machine; skipped elsewhere)."""
import pytest
import torch

from ideogram_app.pipeline.pipeline import Ideogram4Pipeline

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
FAST = dict(width=64, height=48, preset="turbo", num_inference_steps=3, seed=5)


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
    assert image.size == (64, 48)


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
