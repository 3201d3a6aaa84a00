"""Whole runs of `python -m ideogram_app.train` on the tiny repos: a LoRA that overfits and whose file
loads in our pipeline and in diffusers' LoRA loader, validation samples equal to the pipeline's own
images, a full fine-tune whose output is a pipeline component, caches reused across runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import Ideogram4Pipeline as DiffusersPipeline
from PIL import Image
from safetensors.torch import load_file

from ideogram_app.loading.dit import load_transformer
from ideogram_app.loading.text_encoder import load_text_encoder
from ideogram_app.loading.vae import load_vae
from ideogram_app.lora import apply_lora, lora_targets, read_lora
from ideogram_app.pipeline import Ideogram4Pipeline, ModelConfig
from ideogram_app.pipeline.conditioning import encode_image, encode_text
from ideogram_app.pipeline.metadata import read_image_metadata
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.train.cli import main
from ideogram_app.train.data import load_dataset, training_pixels
from ideogram_app.train.config import parse_args
from ideogram_app.train.objective import collate, draw, flow_matching_loss
from ideogram_app.train.adapters import trained_modules
from ideogram_app.train.records import read_metrics
from tests.model.test_dit_parity import make_inputs
from tests.train import reference
from tests.train.conftest import base_args, caption, lora_args, prepared

OVERFIT_STEPS = 40


@pytest.fixture(scope="module")
def lora_run(tiny_repos, dataset, cache_dir, tmp_path_factory):
    """A LoRA run that overfits the four images and samples one validation prompt at the end."""
    root = tmp_path_factory.mktemp("lora_run")
    prompts = root / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": caption(0), "width": 64, "height": 64, "seed": 3}) + "\n")
    output = root / "out"
    args = lora_args(tiny_repos["bf16"], dataset, output, cache_dir, "--lora_rank", "8", "--learning_rate", "3e-3",
                     "--max_steps", str(OVERFIT_STEPS), "--save_steps", "20", "--save_format", "both",
                     "--validation_prompts", str(prompts), "--validation_preset", "turbo", "--trigger", "ohwx")
    assert main(args) == 0
    return output, args


def evaluation_loss(repo: Path, dataset: Path, lora: Path | None) -> float:
    """Mean loss over the four images at 8 fixed (t, noise) draws each, computed through the pipeline's
    own loading, encoding and LoRA code (not the trainer's model or caches)."""
    config, _ = parse_args(base_args(repo, dataset, Path("unused"), Path("unused"), "--lora_base_model", "dit", "--trigger", "ohwx"))
    samples = load_dataset(config).samples
    plan = MemoryPlan.create("cpu")
    dit = load_transformer(repo, dtype=torch.float32)
    if lora is not None:
        apply_lora(dit, lora)
    vae, text_encoder = load_vae(repo, dtype=torch.float32), load_text_encoder(repo, dtype=torch.float32)
    losses = []
    with torch.no_grad():
        for sample in samples:
            x0 = encode_image(vae, training_pixels(sample), plan)[0]
            features = encode_text(text_encoder, sample.caption, plan)
            for slot in range(8):
                t, noise = draw(123, 0, slot, x0.shape[0], sample.height, sample.width, 0.0, 1.5)
                batch = collate([x0], [features[0]], [t], [noise], (sample.height // 16, sample.width // 16), projected=False)
                losses.append(flow_matching_loss(dit, dit, batch).item())
    return float(np.mean(losses))


def test_lora_overfits_four_images(lora_run, tiny_repos, dataset):
    output, _ = lora_run
    rows = read_metrics(output)
    assert [r["step"] for r in rows] == list(range(1, OVERFIT_STEPS + 1))
    assert set(rows[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "s_per_step", "peak_mem_gib"}
    before = evaluation_loss(tiny_repos["bf16"], dataset, None)
    after = evaluation_loss(tiny_repos["bf16"], dataset, output / "lora.safetensors")
    first, last = np.mean([r["loss"] for r in rows[:8]]), np.mean([r["loss"] for r in rows[-8:]])
    print(f"\noverfitting 4 images, {OVERFIT_STEPS} steps: fixed-draw loss {before:.4f} -> {after:.4f}; "
          f"training loss (mean of 8 steps) {first:.4f} -> {last:.4f}")
    assert after < 0.8 * before
    run = json.loads((output / "run.json").read_text())
    assert run["status"] == "finished" and run["step"] == OVERFIT_STEPS
    assert run["config"]["lora_rank"] == 8 and run["outputs"] == [str(output / "lora.safetensors"), str(output / "lora.diffusers.safetensors")]
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-0000020", "step-0000040"]


def test_lora_file_loads_in_our_pipeline_and_in_diffusers_with_identical_dit_output(lora_run, tiny_repos):
    output, _ = lora_run
    native = load_file(output / "lora.safetensors")
    assert "diffusion_model.layers.0.attention.qkv.lora_A.weight" in native
    assert native["diffusion_model.layers.0.attention.qkv.alpha"].item() == 8.0
    assert native["diffusion_model.final_layer.adaln_modulation.lora_B.weight"].abs().max() > 0  # it trained

    ours = load_transformer(tiny_repos["bf16"], dtype=torch.float32)
    report = apply_lora(ours, output / "lora.safetensors")
    assert len(report.matched) == 13 and report.unmatched == ()
    oracle = reference.diffusers_dit(tiny_repos["bf16"] / "transformer")
    state, metadata = DiffusersPipeline.lora_state_dict(str(output / "lora.diffusers.safetensors"), return_lora_metadata=True)
    oracle.load_lora_adapter(state, prefix="transformer", metadata=metadata, adapter_name="trained")
    x, t, llm, pos, seg, ind = make_inputs([6, 3], seed=2)
    with torch.no_grad():
        got = ours(x, t, llm, pos, seg, ind)
        want = oracle(x, t, llm, pos, seg, ind, return_dict=False)[0]
        base = load_transformer(tiny_repos["bf16"], dtype=torch.float32)(x, t, llm, pos, seg, ind)
    image = ind == 2
    error = ((got[image] - want[image]).abs().max() / want[image].abs().max()).item()
    print(f"\nDiT output with the trained LoRA, ours vs diffusers' loader: max rel error {error:.2e}")
    assert error <= 1e-5
    assert (got[image] - base[image]).abs().max() > 1e-3  # the LoRA changes the output
    assert json.loads(load_metadata(output / "lora.safetensors")["trigger_words"]) == ["ohwx"]


def load_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        return handle.metadata()


def test_validation_sample_is_the_pipelines_image_with_the_lora_on_the_conditional_dit_only(lora_run, tiny_repos):
    output, _ = lora_run
    sample = output / "validation" / f"step-{OVERFIT_STEPS:07d}" / "00.png"
    record = read_image_metadata(sample)
    assert record["settings"]["preset"] == "turbo" and record["settings"]["training_step"] == OVERFIT_STEPS
    pipe = Ideogram4Pipeline.from_pretrained(tiny_repos["bf16"], torch_dtype=torch.float32, device="cpu", memory="cpu")
    apply_lora(pipe.transformer, output / "lora.safetensors")
    want = pipe(caption(0), width=64, height=64, preset="turbo", seed=3)
    assert np.array_equal(np.asarray(Image.open(sample)), np.asarray(want))
    without = pipe.unconditional_transformer
    apply_lora(without, output / "lora.safetensors")  # the LoRA on both DiTs (DiffSynth's validation) differs
    assert not np.array_equal(np.asarray(Image.open(sample)), np.asarray(pipe(caption(0), width=64, height=64, preset="turbo", seed=3)))


def test_full_fine_tune_output_is_a_pipeline_component(tiny_repos, dataset, cache_dir, tmp_path):
    output = tmp_path / "full"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": caption(1), "width": 64, "height": 64, "seed": 5}]))
    assert main(base_args(tiny_repos["bf16"], dataset, output, cache_dir, "--trainable_models", "dit", "--max_steps", "2",
                          "--learning_rate", "1e-3", "--validation_prompts", str(prompts), "--validation_preset", "turbo")) == 0
    component = output / "transformer"
    assert sorted(p.name for p in component.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    trained = load_transformer(output, dtype=torch.float32)
    base = load_transformer(tiny_repos["bf16"], dtype=torch.float32)
    checkpoint = load_transformer(output / "checkpoints" / "step-0000002", dtype=torch.float32)
    for (name, p), q, r in zip(trained.named_parameters(), base.parameters(), checkpoint.parameters()):
        assert torch.equal(p, r), name
    assert any(not torch.equal(p, q) for p, q in zip(trained.parameters(), base.parameters()))
    repo = tiny_repos["bf16"]
    pipe = Ideogram4Pipeline.from_pretrained(
        model_configs=[ModelConfig(path=component), ModelConfig(path=repo / "unconditional_transformer"),
                       ModelConfig(path=repo / "text_encoder"), ModelConfig(path=repo / "vae")],
        tokenizer_config=ModelConfig(path=repo / "tokenizer"), torch_dtype=torch.float32, device="cpu", memory="cpu",
    )
    # The validation sample (raw text features, projected by the fine-tuned DiT) is the pipeline's image.
    want = pipe(caption(1), width=64, height=64, preset="turbo", seed=5)
    assert np.array_equal(np.asarray(Image.open(output / "validation" / "step-0000002" / "00.png")), np.asarray(want))


def test_lora_checkpoint_continues_and_preset_lora_is_merged(lora_run, tiny_repos, dataset, cache_dir, tmp_path):
    output, _ = lora_run
    trained = read_lora(output / "lora.safetensors", lora_targets(load_transformer(tiny_repos["bf16"], dtype=torch.float32)))
    run = prepared(lora_args(tiny_repos["bf16"], dataset, tmp_path / "c", cache_dir, "--lora_rank", "8", "--lora_alpha", "2",
                             "--lora_checkpoint", str(output / "lora.safetensors")))
    continued = trained_modules(run.dit, run.alpha)
    assert continued.keys() == trained.modules.keys()
    for name, module in trained.modules.items():  # another alpha, the same delta
        torch.testing.assert_close(continued[name].factor * continued[name].up @ continued[name].down,
                                   module.factor * module.up @ module.down, rtol=1e-5, atol=1e-7)

    run = prepared(lora_args(tiny_repos["bf16"], dataset, tmp_path / "p", cache_dir, "--preset_lora_path", str(output / "lora.safetensors")))
    base = load_transformer(tiny_repos["bf16"], dtype=torch.float32)
    for name, module in trained.modules.items():
        merged = run.dit.get_submodule(name).base.weight
        torch.testing.assert_close(merged, base.get_submodule(name).weight + module.factor * module.up @ module.down, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(m.up, torch.zeros_like(m.up)) for m in trained_modules(run.dit, run.alpha).values())  # a fresh LoRA on top


def test_caches_are_reused_and_split_tasks_work(tiny_repos, dataset, tmp_path, capfd):
    cache = tmp_path / "cache"
    args = lora_args(tiny_repos["bf16"], dataset, tmp_path / "a", cache, "--max_steps", "1")
    assert main(args[:] + ["--task", "sft:train"]) == 1  # nothing cached yet
    assert "cache entries are missing" in json.loads((tmp_path / "a" / "run.json").read_text())["message"]
    assert main(lora_args(tiny_repos["bf16"], dataset, tmp_path / "b", cache, "--task", "sft:data_process")) == 0
    assert "building 4 + 4" in capfd.readouterr().err
    entries = sorted(p.relative_to(cache) for p in cache.rglob("*.safetensors"))
    assert len(entries) == 8 and not list(cache.rglob("*.tmp"))
    assert main(lora_args(tiny_repos["bf16"], dataset, tmp_path / "c", cache, "--max_steps", "1", "--task", "sft:train")) == 0
    assert main(lora_args(tiny_repos["bf16"], dataset, tmp_path / "d", cache, "--max_steps", "1")) == 0
    assert "building 0 + 0" in capfd.readouterr().err
    assert sorted(p.relative_to(cache) for p in cache.rglob("*.safetensors")) == entries


def test_bf16_full_fine_tune_resumes_exactly(tiny_repos, dataset, cache_dir, tmp_path):
    """bf16 weights, fp32 moments, stochastic rounding: a run resumed from step 1 ends bit-identical to one
    that ran straight through (weights, optimiser state and rounding noise all restored)."""
    def args(output, steps, *extra):
        return base_args(tiny_repos["bf16"], dataset, output, cache_dir, "--trainable_models", "dit", "--dtype", "bfloat16",
                         "--learning_rate", "1e-3", "--max_steps", steps, "--save_steps", "1", *extra)

    assert main(args(tmp_path / "straight", "3")) == 0
    assert main(args(tmp_path / "resumed", "1")) == 0
    assert main(args(tmp_path / "resumed", "3", "--resume", "latest")) == 0
    a, b = (load_file(tmp_path / name / "transformer" / "diffusion_pytorch_model.safetensors") for name in ("straight", "resumed"))
    assert {v.dtype for v in a.values()} == {torch.bfloat16}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_metrics(tmp_path / "straight")] == [r["loss"] for r in read_metrics(tmp_path / "resumed")]
    base = load_file(tiny_repos["bf16"] / "transformer" / "diffusion_pytorch_model.safetensors")
    assert sum(not torch.equal(a[k], base[k]) for k in a) == len(a)  # every tensor moved
