"""The trainer's parts against independent references: the bf16 AdamW against torch's AdamW, the
stochastic rounding's expectation, the schedules, activation checkpointing (same gradients, fewer
saved tensors, offloaded block inputs really leave the device), the lean LoRA layer against the LoRA
package's inference layer under autograd (bit for bit per layer, same gradients in the DiT, no
widened weights kept), the fp8 storage pass against the fixture's official recipe, the LoRA size at
the released shapes against the published count."""
from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from torch import nn

from ideogram_app.lora import LoraFile, LoraModule, apply_lora
from ideogram_app.loading.dit import load_transformer
from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.train import adapters
from ideogram_app.train.config import DIFFSYNTH_LORA_TARGETS
from ideogram_app.train.lean_lora import lean_lora
from ideogram_app.train.memory import checkpoint_blocks, quantize_fp8_rows, release_text_projection, store_fp8
from ideogram_app.train.objective import collate, draw, flow_matching_loss
from ideogram_app.train.optim import Bf16AdamW, lr_factor, stochastic_round_bf16
from tests.fixtures import tiny_dit


def test_bf16_adamw_on_fp32_parameters_is_torch_adamw():
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 7, generator=g), torch.randn(3, generator=g)]
    ours = [nn.Parameter(t.clone()) for t in start]
    theirs = [nn.Parameter(t.clone()) for t in start]
    a = Bf16AdamW(ours, lr=3e-2, weight_decay=0.1)
    b = torch.optim.AdamW(theirs, lr=3e-2, weight_decay=0.1, foreach=False)
    for _ in range(6):
        grads = [torch.randn(t.shape, generator=g) for t in start]
        for params, opt in ((ours, a), (theirs, b)):
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            opt.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_stochastic_rounding_is_unbiased_and_keeps_small_updates():
    value = torch.full((200_000,), 1.0 + 2**-10, dtype=torch.float32)  # between two bf16 neighbours (ulp 2^-7)
    rounded = stochastic_round_bf16(value, torch.Generator().manual_seed(1)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert rounded.mean().item() == pytest.approx(1.0 + 2**-10, abs=2e-5)
    negative = stochastic_round_bf16(-value, torch.Generator().manual_seed(2)).float()
    assert negative.mean().item() == pytest.approx(-(1.0 + 2**-10), abs=2e-5)
    # A weight trained in bf16 with 1e-5 updates: plain rounding never moves, stochastic rounding does.
    weight = torch.full((10_000,), 0.5, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(3)
    for _ in range(100):
        weight = stochastic_round_bf16(weight.float() - 1e-5, generator)
    assert weight.float().mean().item() == pytest.approx(0.5 - 1e-3, abs=1e-4)
    assert (torch.tensor(0.5, dtype=torch.bfloat16).float() - 1e-5).to(torch.bfloat16).item() == 0.5


def test_learning_rate_shapes():
    assert [lr_factor(s, 10, 3, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(3, 10, 3, "linear") == 1.0 and lr_factor(10, 10, 3, "linear") == 0.0
    assert lr_factor(0, 10, 0, "cosine") == 1.0 and lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 0, "cosine") == pytest.approx(0.0, abs=1e-12)


@pytest.fixture
def tiny_lora_dit(tmp_path):
    tiny_dit.write_tiny_dit(tmp_path, "bf16", seed=4)

    def make(checkpointing=None):
        dit = load_transformer(tmp_path, dtype=torch.float32)
        names = adapters.select_targets(dit, None)
        modules = adapters.initial_modules(dit, names, 4, 4.0, seed=0)
        g = torch.Generator().manual_seed(9)
        modules = {n: LoraModule(m.down, torch.randn(m.up.shape, generator=g) * 0.05, m.alpha) for n, m in modules.items()}
        params = adapters.attach(dit, modules)
        if checkpointing is not None:
            checkpoint_blocks(dit, offload=checkpointing == "offload")
        return dit, params
    return make


def _batch(features_dim=416):
    t, noise = draw(0, 0, 0, 4 * 5, 64, 80, 0.0, 1.5)
    g = torch.Generator().manual_seed(1)
    return collate([torch.randn(20, 128, generator=g)], [torch.randn(6, features_dim, generator=g)], [t], [noise], (4, 5), projected=False)


@pytest.mark.parametrize("mode", ["checkpoint", "offload"])
def test_activation_checkpointing_gives_the_same_gradients_and_saves_less(tiny_lora_dit, mode):
    batch = _batch()
    results = {}
    for name, checkpointing in (("plain", None), (mode, mode)):
        dit, params = tiny_lora_dit(checkpointing)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = flow_matching_loss(dit, dit, batch)
        loss.backward()
        results[name] = (loss.item(), [p.grad.clone() for p in params], sum(saved))
    (plain_loss, plain_grads, plain_saved), (loss, grads, saved) = results["plain"], results[mode]
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    print(f"\nelements saved for backward: plain {plain_saved:,}, {mode} {saved:,}")
    assert saved < 0.5 * plain_saved


def test_offloaded_checkpoints_let_the_block_inputs_go(tiny_lora_dit):
    """With offload the checkpoints hold host copies, so the block inputs themselves are freed after
    the forward pass (plain checkpointing keeps them for the recomputation)."""
    alive = {}
    for mode in ("checkpoint", "offload"):
        dit, _ = tiny_lora_dit(mode)
        inputs = []
        for block in dit.layers:
            block.register_forward_pre_hook(lambda module, args: inputs.append(weakref.ref(args[0])))
        loss = flow_matching_loss(dit, dit, _batch())
        gc.collect()
        alive[mode] = [ref() is not None for ref in inputs]
        loss.backward()
    assert alive == {"checkpoint": [True, True], "offload": [False, False]}


def _single_layer(base_kind: str, dtype: torch.dtype, preset: bool, lean: bool):
    torch.manual_seed(0)
    holder = nn.Module()
    holder.lin = nn.Linear(96, 160, bias=True).to(dtype).requires_grad_(False)
    if base_kind == "fp8":
        store_fp8(holder)
    g = torch.Generator().manual_seed(3)
    params = adapters.attach(holder, {"lin": LoraModule(torch.randn(8, 96, generator=g) * 0.1,
                                                        torch.randn(160, 8, generator=g) * 0.1, 4.0)})
    if preset:  # a frozen unmerged adapter beside the trained one (a preset LoRA on an fp8 base)
        apply_lora(holder, LoraFile("preset", "comfyui", {"lin": LoraModule(
            torch.randn(4, 96, generator=g) * 0.1, torch.randn(160, 4, generator=g) * 0.1, 2.0)}), name="preset")
    if lean:
        assert lean_lora(holder) == 1
    x = torch.randn(2, 7, 96, generator=g).to(dtype).requires_grad_(True)
    y = holder.lin(x)
    (y.float() * torch.randn(y.shape, generator=g)).sum().backward()
    return [y.detach(), x.grad, *[p.grad for p in params]]


@pytest.mark.parametrize("base_kind", ["float", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset", [False, True])
def test_lean_lora_layer_equals_the_inference_layer_bit_for_bit(base_kind, dtype, preset):
    """Output, input gradient and both factor gradients equal those autograd computes through the LoRA
    package's `LoraLinear` (fp32 factors, a bf16 or fp8-kept base), bit for bit."""
    reference = _single_layer(base_kind, dtype, preset, lean=False)
    lean = _single_layer(base_kind, dtype, preset, lean=True)
    for name, a, b in zip(["output", "input grad", "A grad", "B grad"], reference, lean):
        assert torch.equal(a, b), name


def test_lean_lora_in_the_dit_same_gradients_no_widened_weights_kept(tmp_path):
    """In the whole DiT (fp8-kept base, bf16) the lean layers keep no widened weight and fewer bytes;
    in fp32 the gradients equal the inference layer's (only the order of adding the input gradients
    of layers that share an input differs)."""
    tiny_dit.write_tiny_dit(tmp_path / "fp8", "fp8", seed=4)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        for lean in (False, True):
            dit = load_transformer(tmp_path / "fp8", dtype=dtype, fp8="keep")
            # DiffSynth's targets plus the final Linear: every fp8 layer whose input needs a gradient
            names = adapters.select_targets(dit, DIFFSYNTH_LORA_TARGETS + ",final_layer.linear")
            g = torch.Generator().manual_seed(9)
            modules = {n: LoraModule(m.down, torch.randn(m.up.shape, generator=g) * 0.05, m.alpha)
                       for n, m in adapters.initial_modules(dit, names, 4, 4.0, seed=0).items()}
            params = adapters.attach(dit, modules)
            if lean:
                lean_lora(dit)
            saved = {}
            with torch.autograd.graph.saved_tensors_hooks(
                    lambda t: saved.setdefault(t.untyped_storage().data_ptr(), (tuple(t.shape), t.untyped_storage().nbytes())) and t,
                    lambda t: t):
                loss = flow_matching_loss(dit, dit, _batch() if dtype == torch.float32 else _bf16(_batch()))
            loss.backward()
            results[dtype, lean] = (loss.item(), [p.grad for p in params], saved)
    weight_shapes = {shape for m in dit.modules() if isinstance(m, Fp8Linear) for shape in (m.weight.shape, m.weight.shape[::-1])}
    for lean in (False, True):
        kept = [shape for shape, _ in results[torch.bfloat16, lean][2].values() if shape in weight_shapes]
        assert bool(kept) == (not lean), kept
    plain_bytes, lean_bytes = (sum(b for _, b in results[torch.bfloat16, lean][2].values()) for lean in (False, True))
    print(f"\nbytes saved for backward, fp8-kept bf16 tiny DiT: inference layer {plain_bytes:,}, lean {lean_bytes:,}")
    assert lean_bytes < 0.6 * plain_bytes
    (plain_loss, plain_grads, _), (loss, grads, _) = results[torch.float32, False], results[torch.float32, True]
    assert loss == plain_loss
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def _bf16(batch):
    return collate([batch.latents[0]], [batch.text[0].to(torch.bfloat16)], batch.times.tolist(), [batch.noise[0]],
                   batch.grid, batch.projected)


def test_fp8_storage_uses_the_official_recipe(tmp_path):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 32, generator=g) * torch.logspace(-3, 1, 48)[:, None]
    ours, scale = quantize_fp8_rows(weight)
    fixture, fixture_scale = tiny_dit.quantize_fp8_rows(weight)
    assert torch.equal(ours.view(torch.uint8), fixture.view(torch.uint8)) and torch.equal(scale, fixture_scale)

    tiny_dit.write_tiny_dit(tmp_path, "bf16", seed=4)
    dit = load_transformer(tmp_path, dtype=torch.float32)
    originals = {n: m.weight.detach().clone() for n, m in dit.named_modules() if type(m) is nn.Linear}
    store_fp8(dit)
    for name, original in originals.items():
        module = dit.get_submodule(name)
        assert isinstance(module, Fp8Linear)
        error = (module.dequantize(torch.float32) - original).abs().amax(dim=1) / original.abs().amax(dim=1)
        assert error.max() <= 2**-4  # e4m3: 3 mantissa bits, each row scaled to its own maximum


def test_released_projection_says_why():
    with torch.device("meta"):
        dit = Ideogram4DiT(Ideogram4Config(num_layers=1, emb_dim=512, num_heads=2, intermediate_size=64, llm_features_dim=64))
    release_text_projection(dit)
    assert not any("llm_cond_proj" in n for n, _ in dit.named_parameters())
    with pytest.raises(RuntimeError, match="projected from the feature cache"):
        dit.llm_cond_proj(torch.zeros(1))


def test_default_lora_at_released_shapes_has_106_million_parameters():
    """DiffSynth's targets at rank 32 on the released DiT: about 106.0 M parameters (the suffix rule
    includes final_layer.adaln_modulation)."""
    with torch.device("meta"):
        dit = Ideogram4DiT(Ideogram4Config())
    names = adapters.select_targets(dit, "attention.qkv,attention.o,feed_forward.w1,feed_forward.w2,feed_forward.w3,adaln_modulation")
    assert len(names) == 34 * 6 + 1 and names[-1] == "final_layer.adaln_modulation"
    shapes = {n: m for n, m in dit.named_modules()}
    count = sum(32 * (shapes[n].in_features + shapes[n].out_features) for n in names)
    assert count == 106_004_480 and math.isclose(count / 1e6, 106.0, abs_tol=0.05)
