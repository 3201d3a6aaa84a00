"""Files we write: diffusers' own loader reads them unchanged and gives our output; conversions are exact
and keep ranks; the metadata is all strings."""
import json

import pytest
import torch
from diffusers import Ideogram4Pipeline
from safetensors import safe_open

from ideogram_app.lora import apply_lora, lora_targets, read_lora, write_diffusers, write_native
from tests.lora import loras
from tests.lora.conftest import BASES, run
from tests.model.test_dit_parity import max_rel_err

TOLERANCE = 1e-5


def with_diffusers_loader(model, path, scale=1.0):
    state, metadata = Ideogram4Pipeline.lora_state_dict(str(path), return_lora_metadata=True)
    model.load_lora_adapter(state, prefix="transformer", metadata=metadata, adapter_name="ours")
    model.set_adapters(["ours"], weights=[scale])
    return model


def header(path):
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("base", BASES)
def test_native_file_loads_in_diffusers_unchanged_and_matches_ours(tmp_path, load_ours, load_oracle, inputs, base):
    model = load_ours(base)
    source = loras.write_kohya(tmp_path / "kohya.safetensors", loras.fused_truth(30, rank=5, alpha=7.0))
    lora = read_lora(source, lora_targets(model))
    path = write_native(tmp_path / "ours.safetensors", lora.modules, base_model="ideogram-ai/ideogram-4-fp8",
                        trigger_words=["ink sketch", "zine"], steps=1500)
    apply_lora(model, path, scale=0.8)
    want = run(with_diffusers_loader(load_oracle(base), path, 0.8), inputs, return_dict=False)
    assert max_rel_err(run(model, inputs), want, inputs[-1]) <= TOLERANCE

    shapes, metadata = header(path)
    assert shapes["diffusion_model.layers.0.attention.qkv.lora_A.weight"] == (5, loras.D)
    assert shapes["diffusion_model.layers.0.attention.qkv.alpha"] == ()
    assert all(isinstance(v, str) for v in metadata.values())
    assert metadata["rank"] == "5" and metadata["alpha"] == "7" and metadata["steps"] == "1500"
    assert metadata["base_model"] == "ideogram-ai/ideogram-4-fp8"
    assert json.loads(metadata["trigger_words"]) == ["ink sketch", "zine"]
    assert metadata["targets"] == "adaln_modulation,attention.o,attention.qkv,feed_forward.w1,feed_forward.w2,feed_forward.w3"


@pytest.mark.parametrize("base", BASES)
def test_diffusers_export_of_a_fused_lora_with_mixed_ranks_and_alphas(tmp_path, load_ours, load_oracle, inputs, base):
    """Fused adapters on every target, one block at another rank and alpha: rank/alpha patterns in the
    PEFT config; q/k/v get the same A and their thirds of B."""
    truth = loras.fused_truth(31, rank=4, alpha=2.0, globals_=True) | loras.fused_truth(32, rank=6, alpha=1.0, layers=[1])
    model = load_ours(base)
    lora = read_lora(loras.write_comfyui(tmp_path / "in.safetensors", truth), lora_targets(model))
    path = write_diffusers(tmp_path / "diffusers.safetensors", lora.modules)
    apply_lora(model, path, scale=1.3)
    want = run(with_diffusers_loader(load_oracle(base), path, 1.3), inputs, return_dict=False)
    assert max_rel_err(run(model, inputs), want, inputs[-1]) <= TOLERANCE

    shapes, metadata = header(path)
    with safe_open(str(path), "pt") as f:
        a_q, a_v = f.get_tensor("transformer.layers.1.attention.to_q.lora_A.weight"), f.get_tensor("transformer.layers.1.attention.to_v.lora_A.weight")
    assert a_q.shape == (6, loras.D) and torch.equal(a_q, a_v)
    assert shapes["transformer.layers.0.attention.to_out.0.lora_B.weight"] == (loras.D, 4)
    config = json.loads(metadata["lora_adapter_metadata"])
    assert config["transformer.r"] == 4 and config["transformer.lora_alpha"] == 2
    assert config["transformer.rank_pattern"][r"^layers\.1\.attention\.to_q"] == 6
    assert read_lora(path, lora_targets(model)).modules["layers.1.attention.qkv"].rank == 6  # shared A: rank stays


def test_split_lora_round_trips_through_fused_at_its_own_ranks(tmp_path, load_ours, load_oracle, inputs):
    """diffusers (separate A's, ranks 2/4/3) → fused block-diagonal (rank 9) → diffusers: ranks 2/4/3 again."""
    truth = loras.split_truth(33, ranks=(2, 4, 3), alpha=3.0, globals_=True)
    source = loras.write_diffusers(tmp_path / "src.safetensors", truth)
    targets = lora_targets(load_ours("bf16"))
    fused = read_lora(source, targets)
    assert fused.modules["layers.0.attention.qkv"].rank == 9
    path = write_diffusers(tmp_path / "back.safetensors", fused.modules)
    shapes, _ = header(path)
    for part, rank in (("to_q", 2), ("to_k", 4), ("to_v", 3)):
        assert shapes[f"transformer.layers.1.attention.{part}.lora_A.weight"] == (rank, loras.D)
    want = run(with_diffusers_loader(load_oracle("bf16"), source), inputs, return_dict=False)
    got = run(with_diffusers_loader(load_oracle("bf16"), path), inputs, return_dict=False)
    assert max_rel_err(got, want, inputs[-1]) <= TOLERANCE


def test_native_round_trip_is_lossless(tmp_path, load_ours):
    targets = lora_targets(load_ours("bf16"))
    truth = loras.fused_truth(34, rank=3, alpha=1.5, globals_=True, dtype=torch.bfloat16)
    first = read_lora(loras.write_diffsynth(tmp_path / "ds.safetensors", {k: (a, b, 3.0) for k, (a, b, _) in truth.items()}), targets)
    again = read_lora(write_native(tmp_path / "native.safetensors", first.modules), targets)
    assert again.format == "comfyui" and list(again.modules) == list(first.modules)
    for name, module in first.modules.items():
        other = again.modules[name]
        assert other.down.dtype == torch.bfloat16
        assert torch.equal(other.down, module.down) and torch.equal(other.up, module.up) and other.alpha == module.alpha
