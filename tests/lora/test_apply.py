"""Stacking, scaling, merging and unloading on the tiny DiT (fp32 compute), against hand-merged weights
on diffusers' model and against the untouched base."""
import pytest
import torch

from ideogram_app.lora import apply_lora, loaded, lora_targets, remove, set_scale
from ideogram_app.lora.layer import LoraLinear
from ideogram_app.model.fp8 import Fp8Linear
from tests.lora import loras
from tests.lora.conftest import BASES, run
from tests.model.test_dit_parity import max_rel_err

TOLERANCE = 1e-5


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, dict(model.named_modules())


def assert_bit_exact(model, snap, base_output, inputs):
    state, modules = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert now[key].dtype == value.dtype and torch.equal(now[key], value), key
    for name, module in model.named_modules():  # the very same module objects, no wrapper left
        assert modules[name] is module
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert torch.equal(run(model, inputs), base_output)


@pytest.fixture
def two_files(tmp_path):
    first = loras.fused_truth(11, rank=4, alpha=2.0, globals_=True)
    second = loras.fused_truth(12, rank=6, alpha=9.0)
    return (first, loras.write_comfyui(tmp_path / "first.safetensors", first),
            second, loras.write_kohya(tmp_path / "second.safetensors", second))


@pytest.mark.parametrize("base", BASES)
def test_stacked_loras_add_their_deltas_and_scales_change_without_reloading(two_files, load_ours, load_oracle, inputs, base):
    first, first_path, second, second_path = two_files
    model = load_ours(base)
    apply_lora(model, first_path, name="one", scale=0.5)
    apply_lora(model, second_path, name="two", scale=1.25)
    want = run(loras.hand_merge(load_oracle(base), loras.add_deltas(
        [loras.diffusers_deltas(first, 0.5), loras.diffusers_deltas(second, 1.25)])), inputs, return_dict=False)
    assert max_rel_err(run(model, inputs), want, inputs[-1]) <= TOLERANCE

    set_scale(model, "one", -0.8)
    want = run(loras.hand_merge(load_oracle(base), loras.add_deltas(
        [loras.diffusers_deltas(first, -0.8), loras.diffusers_deltas(second, 1.25)])), inputs, return_dict=False)
    assert max_rel_err(run(model, inputs), want, inputs[-1]) <= TOLERANCE
    assert [(r.name, r.scale) for r in loaded(model).values()] == [("one", -0.8), ("two", 1.25)]


@pytest.mark.parametrize("base", BASES)
def test_scale_zero_is_the_base_and_unload_restores_it_bit_exactly(two_files, load_ours, inputs, base):
    _, first_path, _, second_path = two_files
    model = load_ours(base)
    snap = snapshot(model)
    base_output = run(model, inputs)
    apply_lora(model, first_path, name="one", scale=0.0)
    assert torch.equal(run(model, inputs), base_output)
    set_scale(model, "one", 1.0)
    apply_lora(model, second_path, name="two")
    assert not torch.equal(run(model, inputs), base_output)
    if base == "fp8":  # the fp8 weights are never touched, not even while a LoRA is on
        assert all(isinstance(m.base, Fp8Linear) and m.base.weight.dtype == torch.float8_e4m3fn
                   for m in model.modules() if isinstance(m, LoraLinear))
    remove(model, "one")
    assert list(loaded(model)) == ["two"]
    remove(model)
    assert loaded(model) == {}
    assert_bit_exact(model, snap, base_output, inputs)


def test_merged_equals_unmerged_and_unmerge_is_bit_exact(two_files, load_ours, inputs):
    first, first_path, _, second_path = two_files
    model = load_ours("bf16")
    snap = snapshot(model)
    base_output = run(model, inputs)
    apply_lora(model, first_path, name="one", scale=0.6)
    apply_lora(model, second_path, name="two", scale=1.5)
    unmerged = run(model, inputs)
    set_scale(model, "two", 0.25)
    unmerged_rescaled = run(model, inputs)
    remove(model)

    apply_lora(model, first_path, name="one", scale=0.6, merge=True)
    apply_lora(model, second_path, name="two", scale=1.5, merge=True)
    assert all(a.merged for m in model.modules() if isinstance(m, LoraLinear) for a in m.adapters.values())
    merged = run(model, inputs)
    assert max_rel_err(merged, unmerged, inputs[-1]) <= TOLERANCE
    set_scale(model, "two", 0.25)  # rebuilt from the kept original, not by subtracting
    assert max_rel_err(run(model, inputs), unmerged_rescaled, inputs[-1]) <= TOLERANCE
    assert all(r.merged for r in loaded(model).values())
    remove(model)
    assert_bit_exact(model, snap, base_output, inputs)


def test_the_weight_kept_for_unmerging_is_no_parameter_of_the_model(two_files, load_ours):
    """Kept as a plain tensor: as a Parameter attribute it would join the state_dict and move with .to()."""
    _, first_path, _, _ = two_files
    model = load_ours("bf16")
    names = {n.replace(".base.", ".") for n, _ in model.named_parameters()}
    apply_lora(model, first_path, name="one", merge=True)
    assert {n.replace(".base.", ".") for n, _ in model.named_parameters()} == names
    assert not any(key.endswith("_original") for key in model.state_dict())


def test_merged_and_unmerged_mix_on_one_layer(two_files, load_ours, inputs):
    _, first_path, _, second_path = two_files
    model = load_ours("bf16")
    snap = snapshot(model)
    base_output = run(model, inputs)
    apply_lora(model, first_path, name="one", scale=0.9)
    apply_lora(model, second_path, name="two", scale=1.1)
    both_unmerged = run(model, inputs)
    remove(model, "two")
    apply_lora(model, second_path, name="two", scale=1.1, merge=True)
    assert max_rel_err(run(model, inputs), both_unmerged, inputs[-1]) <= TOLERANCE
    remove(model, "two")
    remove(model, "one")
    assert_bit_exact(model, snap, base_output, inputs)


def test_merge_into_fp8_kept_weights_is_refused_before_anything_changes(two_files, load_ours, inputs):
    _, first_path, _, _ = two_files
    model = load_ours("fp8")
    snap = snapshot(model)
    base_output = run(model, inputs)
    with pytest.raises(ValueError, match=r"cannot merge LoRA 'first': 'input_proj' is Fp8Linear .*never re-quantised"):
        apply_lora(model, first_path, merge=True)
    assert loaded(model) == {}
    assert_bit_exact(model, snap, base_output, inputs)


def test_names_scales_and_targets(two_files, load_ours):
    first, first_path, _, _ = two_files
    model = load_ours("bf16")
    targets = lora_targets(model)
    assert targets["layers.1.attention.qkv"] == (3 * loras.D, loras.D)
    assert targets["llm_cond_proj"] == (loras.D, loras.LLM_DIM)
    report = apply_lora(model, first_path)
    assert report.name == "first" and report.scale == 1.0 and not report.merged
    assert lora_targets(model) == targets  # wrapped layers are still the same targets
    with pytest.raises(ValueError, match="a LoRA named 'first' is already loaded"):
        apply_lora(model, first_path)
    with pytest.raises(ValueError, match="must be non-empty letters"):
        apply_lora(model, first_path, name="a.b")
    with pytest.raises(ValueError, match="scale must be a finite number"):
        set_scale(model, "first", float("nan"))
    with pytest.raises(KeyError, match=r"no LoRA named 'other' is loaded \(loaded: \['first'\]\)"):
        remove(model, "other")
    assert report.ranks == (4,) and report.alphas == (2.0,)
    assert "first: comfyui LoRA, 19 modules" in report.summary()
    for name in ("keys", "train", "base"):  # names that are also attributes of torch modules
        apply_lora(model, first_path, name=name, scale=0.5)
    assert list(loaded(model)) == ["first", "keys", "train", "base"]
    assert list(model.get_submodule("layers.0.attention.qkv").adapters) == ["first", "keys", "train", "base"]
    remove(model, "train")
    assert list(model.get_submodule("input_proj").adapters) == ["first", "keys", "base"]


def test_bf16_compute_tracks_fp32(two_files, load_ours, base_files, inputs):
    from ideogram_app.loading.dit import load_transformer

    _, first_path, _, _ = two_files
    reference = load_ours("fp8")
    apply_lora(reference, first_path)
    low = load_transformer(base_files["fp8"][0], dtype=torch.bfloat16, fp8="keep")
    apply_lora(low, first_path)
    assert all(a.down.dtype == torch.bfloat16 for m in low.modules() if isinstance(m, LoraLinear) for a in m.adapters.values())
    x, t, *rest = inputs
    t = t.to(torch.bfloat16).float()
    with torch.no_grad():
        got = low(x, t, *rest)
        want = reference(x, t, *rest)
    assert max_rel_err(got, want, inputs[-1]) < 0.05
