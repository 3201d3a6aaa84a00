"""LoRA on a CUDA device: bitsandbytes NF4 bases, and the per-step cost at the real shapes.

Marked `gpu` and skipped without CUDA; run on the lent GPU machine:
    python -m pytest tests/lora/test_gpu.py -m gpu -q -s
"""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ideogram_app.loading.dit import load_transformer
from ideogram_app.lora import LoraFile, LoraModule, apply_lora, lora_targets, remove
from ideogram_app.lora.layer import LoraLinear
from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.token_layout import build_token_layout
from tests.fixtures.cuda_timing import median_cuda_ms
from tests.fixtures.tiny_dit import DIT_FILE, write_tiny_dit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def random_lora(targets, rank, seed, dtype=torch.float32, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    modules = {}
    for name, (out_f, in_f) in targets.items():
        down = torch.randn(rank, in_f, generator=g, device=device) / in_f**0.5
        up = torch.randn(out_f, rank, generator=g, device=device) * (0.5 / rank**0.5)
        modules[name] = LoraModule(down.to(dtype), up.to(dtype), float(rank) / 2)
    return LoraFile(f"random-rank-{rank}", "comfyui", modules)


def test_lora_beside_nf4_matches_the_dequantised_weights_and_unloads_exactly(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    # in-dims that are multiples of bitsandbytes' 64-block, like every real one
    file = write_tiny_dit(tmp_path / "nf4", "nf4", seed=3, nf4_device="cuda", llm_features_dim=448, adaln_dim=64)
    model = load_transformer(tmp_path / "nf4", device="cuda", dtype=torch.float32)
    targets = lora_targets(model)
    assert all(isinstance(model.get_submodule(n), bnb.nn.Linear4bit) for n in targets)

    # The reference: plain fp32 linears holding the weights the NF4 layers actually multiply by (read
    # back through bitsandbytes' own fp32 path, which does not round to bf16 as dequantize_4bit does:
    # W^T = layer(I) - bias), with the LoRA merged by hand.
    raw = load_file(file)
    dense = {k: v for k, v in raw.items() if not any(k.startswith(n + ".weight") for n in targets)}
    with torch.no_grad():
        for name, (out_f, in_f) in targets.items():
            layer = model.get_submodule(name)
            probe = layer(torch.eye(in_f, device="cuda")) - (0 if layer.bias is None else layer.bias)
            dense[name + ".weight"] = probe.t().contiguous().cpu()
            stored = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float().cpu()
            assert torch.allclose(dense[name + ".weight"], stored, rtol=1e-2, atol=1e-3), name
    (tmp_path / "dense").mkdir()
    save_file(dense, tmp_path / "dense" / DIT_FILE)
    (tmp_path / "dense/config.json").write_text((file.parent / "config.json").read_text())
    reference = load_transformer(tmp_path / "dense", device="cuda", dtype=torch.float32)
    lora = random_lora(targets, rank=4, seed=1)
    with torch.no_grad():
        for name, module in lora.modules.items():
            reference.get_submodule(name).weight += 0.7 * module.factor * (module.up @ module.down).cuda()

    pos, seg, ind = (v.cuda() for v in build_token_layout([5, 2], 3, 4, batch=2))
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, pos.shape[1], 128, generator=g).cuda(), torch.tensor([0.3, 0.8], device="cuda"),
              torch.randn(2, pos.shape[1], 448, generator=g).cuda(), pos, seg, ind)
    packed = {n: model.get_submodule(n).weight.data.clone() for n in targets}
    with torch.no_grad():
        base = model(*inputs)
        with pytest.raises(ValueError, match="cannot merge LoRA 'x': 'input_proj' is Linear4bit"):
            apply_lora(model, lora, name="x", merge=True)
        apply_lora(model, lora, name="x", scale=0.7)
        got, want = model(*inputs), reference(*inputs)
        image = ind == 2
        err = ((got - want)[image].abs().max() / want[image].abs().max()).item()
        print(f"\nNF4 base + unmerged LoRA vs dequantised weights + hand-merged LoRA (fp32): max rel err {err:.2e}")
        assert err <= 1e-5
        remove(model)
        assert torch.equal(model(*inputs), base)
    for name in targets:
        layer = model.get_submodule(name)
        assert isinstance(layer, bnb.nn.Linear4bit) and torch.equal(layer.weight.data, packed[name])


def _to_fp8_kept(model):
    """Quantise every Linear row-wise to e4m3 (scale = max|row| / 448) and keep it as Fp8Linear."""
    for name, linear in [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]:
        parent_name, _, child = name.rpartition(".")
        layer = Fp8Linear(linear.in_features, linear.out_features, linear.bias is not None, "cuda", torch.bfloat16)
        scale = (linear.weight.float().abs().amax(dim=1) / 448).clamp_min(1e-12)
        layer.weight.copy_((linear.weight.float() / scale[:, None]).to(torch.float8_e4m3fn))
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return model


def test_lora_step_cost_at_real_shapes():
    """One conditional DiT forward at 1024² (4096 image + 300 text tokens), random weights, a rank-32
    LoRA on every target: unmerged ≤ 10 % over the base on bf16 and fp8-kept bases, merged ≤ 1 %."""
    cfg = Ideogram4Config()
    with torch.device("meta"):
        model = Ideogram4DiT(cfg).to(torch.bfloat16)
    model = model.to_empty(device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    model.eval()
    lora = random_lora(lora_targets(model), rank=32, seed=2, dtype=torch.bfloat16, device="cuda")

    n_text, grid = 300, 64
    pos, seg, ind = (v.cuda() for v in build_token_layout([n_text], grid, grid))
    x = torch.randn(1, pos.shape[1], cfg.in_channels, device="cuda", generator=gen)
    t = torch.full((1,), 0.3, device="cuda")
    with torch.inference_mode():
        feats = torch.randn(1, n_text, cfg.llm_features_dim, device="cuda", generator=gen).bfloat16()
        positions = model.prepare_positions(pos, seg)

        def step():
            text_hidden = model.project_text(feats, ind)
            return model(x, t, None, pos, seg, ind, text_hidden=text_hidden, positions=positions)

        rows = {}
        rows["bf16 base"] = median_cuda_ms(step)
        apply_lora(model, lora, name="l", merge=True)
        rows["bf16 merged"] = median_cuda_ms(step)
        remove(model)
        apply_lora(model, lora, name="l")
        rows["bf16 unmerged"] = median_cuda_ms(step)
        remove(model)
        _to_fp8_kept(model)
        torch.cuda.empty_cache()
        rows["fp8 base"] = median_cuda_ms(step)
        apply_lora(model, lora, name="l")
        assert sum(isinstance(m, LoraLinear) for m in model.modules()) == len(lora.modules)
        rows["fp8 unmerged"] = median_cuda_ms(step)
        remove(model)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, 1024², rank 32 on {len(lora.modules)} linears")
    for label, ms in rows.items():
        base = rows["fp8 base" if label.startswith("fp8") else "bf16 base"]
        print(f"  {label:14s} {ms:8.1f} ms  {100 * (ms / base - 1):+6.1f} %")
    assert rows["bf16 unmerged"] <= 1.10 * rows["bf16 base"]
    assert rows["fp8 unmerged"] <= 1.10 * rows["fp8 base"]
    assert rows["bf16 merged"] <= 1.01 * rows["bf16 base"]
