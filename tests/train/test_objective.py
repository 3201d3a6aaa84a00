"""One optimisation step of the real trainer (settings → caches → first batch → forward/backward)
against an independent reference: diffusers' transformer on the same checkpoint, the objective's
formula written out in tests/train/reference.py, the same sample, t and noise. fp32 on the CPU."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ideogram_app.loading.text_encoder import load_text_encoder
from ideogram_app.loading.vae import load_vae
from ideogram_app.pipeline.conditioning import encode_image, encode_text
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.train.adapters import ADAPTER
from ideogram_app.train.data import training_pixels
from ideogram_app.train.loop import Run, epoch_batches, make_batch, micro_step
from ideogram_app.train.objective import sample_time, slot_generator
from tests.train import reference
from tests.train.conftest import base_args, lora_args, prepared

TOLERANCE = 2e-5


def first_sample(run: Run):
    """The first batch the loop trains on, and what the reference needs to rebuild it by itself."""
    items = epoch_batches([s.size for s in run.inputs.dataset.samples], 1, 1, run.config.seed, 0)[0]
    (slot, index), = items
    sample = run.inputs.dataset.samples[index]
    repo = Path(run.config.model)
    plan = MemoryPlan.create("cpu")
    x0 = encode_image(load_vae(repo, dtype=torch.float32), training_pixels(sample), plan)[0]
    features = encode_text(load_text_encoder(repo, dtype=torch.float32), sample.caption, plan)
    t, noise = reference.ref_draw(slot_generator(run.config.seed, 0, slot), sample.height, sample.width, x0.shape[0])
    return make_batch(run, items, 0), sample, x0, features, t, noise


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_full_fine_tune_step_equals_diffusers_reference(tiny_repos, dataset, cache_dir, tmp_path):
    run = prepared(base_args(tiny_repos["bf16"], dataset, tmp_path / "out", cache_dir, "--trainable_models", "dit"))
    batch, sample, x0, features, t, noise = first_sample(run)
    # The cache holds what inference's own functions compute, and the draw follows the formula.
    torch.testing.assert_close(batch.latents[0], x0)
    assert batch.times.tolist() == pytest.approx([t], rel=1e-7) and torch.equal(batch.noise[0], noise)
    loss = micro_step(run, batch, 1.0)

    oracle = reference.diffusers_dit(Path(run.config.model) / "transformer")
    want = reference.reference_loss(oracle, x0, noise, t, features, (sample.height // 16, sample.width // 16))
    want.backward()
    print(f"\nfull fine-tune step: loss ours {loss.item():.8f}, diffusers {want.item():.8f}")
    assert loss.item() == pytest.approx(want.item(), rel=TOLERANCE)
    worst = {name: max_rel(p.grad, reference.fused_grad(oracle, name)) for name, p in run.dit.named_parameters()}
    assert len(worst) == len(list(oracle.parameters())) - 2 * run.dit.cfg.num_layers  # per block: to_q/to_k/to_v → qkv
    assert max(worst.values()) <= 1e-4, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def test_lora_step_equals_diffusers_reference_with_the_adapter_merged(tiny_repos, dataset, cache_dir, tmp_path):
    run = prepared(lora_args(tiny_repos["bf16"], dataset, tmp_path / "out", cache_dir))
    assert run.text_recipe.kind == "projected"  # LoRA keeps the projection frozen: projected rows are cached
    g = torch.Generator().manual_seed(5)
    adapters = {}
    with torch.no_grad():  # B = 0 at the start; give it values so that both factors get a gradient
        for name, module in run.dit.named_modules():
            if hasattr(module, "adapters") and ADAPTER in module.adapters:
                adapter = module.adapters[ADAPTER]
                adapter.up.copy_(torch.randn(adapter.up.shape, generator=g) * 0.05)
                adapters[name] = adapter
    assert len(adapters) == 2 * 6 + 1  # every block target, plus final_layer.adaln_modulation (suffix rule)
    batch, sample, x0, features, t, noise = first_sample(run)
    loss = micro_step(run, batch, 1.0)

    oracle = reference.diffusers_dit(Path(run.config.model) / "transformer")
    for name, adapter in adapters.items():
        reference.merge_lora(oracle, name, adapter.down.detach(), adapter.up.detach(), adapter.factor)
    want = reference.reference_loss(oracle, x0, noise, t, features, (sample.height // 16, sample.width // 16))
    want.backward()
    print(f"\nLoRA step: loss ours {loss.item():.8f}, diffusers with the adapter merged {want.item():.8f}")
    assert loss.item() == pytest.approx(want.item(), rel=TOLERANCE)
    for name, adapter in adapters.items():
        weight_grad = reference.fused_grad(oracle, name + ".weight")  # dL/dW at W + f B A
        assert adapter.up.grad.dtype == torch.float32 and adapter.down.grad.dtype == torch.float32
        assert max_rel(adapter.up.grad, adapter.factor * weight_grad @ adapter.down.detach().T) <= 1e-4, name
        assert max_rel(adapter.down.grad, adapter.factor * adapter.up.detach().T @ weight_grad) <= 1e-4, name
    frozen = [n for n, p in run.dit.named_parameters() if not p.requires_grad]
    assert frozen and all(run.dit.get_parameter(n).grad is None for n in frozen)


def test_time_distribution_is_the_resolution_aware_logit_normal():
    """logit(1 - t) of many draws: mean 0.5 ln(HW/512^2) (+ln 2 at 1024^2, 0 at 512^2), std 1.5; t inside
    the sampler's range even for extreme draws."""
    for (height, width), mean in (((1024, 1024), math.log(2)), ((512, 512), 0.0), ((768, 1360), 0.5 * math.log(768 * 1360 / 512**2))):
        ts = torch.tensor([sample_time(slot_generator(1, 0, i), height, width) for i in range(4000)], dtype=torch.float64)
        inner = ts[(ts > reference.T_MIN_DOC) & (ts < reference.T_MAX_DOC)]
        y = torch.log((1 - inner) / inner)
        assert y.mean().item() == pytest.approx(mean, abs=0.07)
        assert y.std().item() == pytest.approx(1.5, abs=0.06)
    extreme = [sample_time(slot_generator(0, 0, 0), 64, 64, mu=mu) for mu in (-40.0, 40.0)]
    assert extreme == [pytest.approx(reference.T_MAX_DOC), pytest.approx(reference.T_MIN_DOC)]
