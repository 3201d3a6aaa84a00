"""Every published LoRA layout, applied by us, against an independent oracle on the same base weights:
diffusers' own loader (`Ideogram4Pipeline.lora_state_dict` + `load_lora_adapter`, PEFT) where
diffusers reads the layout, hand-merged `W + s·(alpha/r)·B@A` on diffusers' model otherwise.
fp32 compute; bases: the bf16 file and the fp8 file kept as fp8."""
from functools import partial

import pytest
from diffusers import Ideogram4Pipeline

from ideogram_app.lora import apply_lora
from tests.lora import loras
from tests.lora.conftest import BASES, run
from tests.model.test_dit_parity import max_rel_err

TOLERANCE = 1e-5
SCALE = 0.7


def _alpha_is_rank(truth):
    return {k: (a, b, float(a.shape[0])) for k, (a, b, _) in truth.items()}


# name: (truth, writer, oracle, expected format). "diffusers" oracles only get modules diffusers' loader reads.
CASES = {
    "comfyui": (lambda: loras.fused_truth(1), loras.write_comfyui, "diffusers", "comfyui"),
    "comfyui unprefixed": (lambda: loras.fused_truth(2), partial(loras.write_comfyui, prefix=""), "diffusers", "comfyui"),
    "comfyui lora_down/up": (lambda: loras.fused_truth(3), partial(loras.write_comfyui, down=".lora_down.weight", up=".lora_up.weight"),
                             "diffusers", "comfyui"),
    "comfyui without alpha": (lambda: _alpha_is_rank(loras.fused_truth(4)), partial(loras.write_comfyui, alpha=False), "diffusers", "comfyui"),
    "comfyui all targets": (lambda: loras.fused_truth(5, globals_=True), loras.write_comfyui, "hand", "comfyui"),
    "kohya lora_unet_": (lambda: loras.fused_truth(6, rank=3, alpha=1.5, globals_=True), loras.write_kohya, "hand", "kohya"),
    "diffsynth": (lambda: _alpha_is_rank(loras.fused_truth(7, globals_=True)), loras.write_diffsynth, "hand", "diffsynth"),
    "diffusers": (lambda: loras.split_truth(8, globals_=True), loras.write_diffusers, "diffusers", "diffusers"),
    "diffusers without metadata": (lambda: _alpha_is_rank(loras.split_truth(9)), partial(loras.write_diffusers, metadata=False),
                                   "diffusers", "diffusers"),
    "onetrainer": (lambda: loras.split_truth(10, ranks=(2, 4, 3), alpha=2.0, globals_=True), loras.write_onetrainer, "hand", "onetrainer"),
}


def oracle_output(load_oracle, base, truth, path, oracle, inputs):
    model = load_oracle(base)
    if oracle == "diffusers":
        state, metadata = Ideogram4Pipeline.lora_state_dict(str(path), return_lora_metadata=True)
        model.load_lora_adapter(state, prefix="transformer", metadata=metadata, adapter_name="lora")
        model.set_adapters(["lora"], weights=[SCALE])
    else:
        loras.hand_merge(model, loras.diffusers_deltas(truth, SCALE))
    return run(model, inputs, return_dict=False)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("case", list(CASES))
def test_layout_matches_oracle(tmp_path, load_ours, load_oracle, inputs, base, case):
    make_truth, writer, oracle, fmt = CASES[case]
    truth = make_truth()
    path = writer(tmp_path / "lora.safetensors", truth)
    ours = load_ours(base)
    before = run(ours, inputs)
    report = apply_lora(ours, path, scale=SCALE)
    got = run(ours, inputs)
    want = oracle_output(load_oracle, base, truth, path, oracle, inputs)

    ind = inputs[-1]
    assert report.format == fmt
    assert report.unmatched == ()
    assert set(report.matched) == loras.our_names(truth)
    assert max_rel_err(before, want, ind) > 0.05  # the LoRA changes the output a lot, so the check has teeth
    assert max_rel_err(got, want, ind) <= TOLERANCE
