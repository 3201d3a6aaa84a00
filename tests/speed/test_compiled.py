"""Exact mode (`ideogram_app/speed/compiled.py`) on the tiny DiT, CPU: the compiled blocks against the
same model run eagerly (fp32 to reassociation noise, bf16 to rounding), one graph shared by all blocks
and kept across image sizes and text lengths, LoRAs applied/rescaled/removed after compiling, fp8-kept
linears, weights swapped in by memory plans, the compile cache read by a second process. Compile counts
come from dynamo's own counters. The GPU test at the released shapes is at the bottom (`-m gpu`)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from ideogram_app.loading.dit import load_transformer
from ideogram_app.lora import apply_lora, remove, set_scale
from ideogram_app.model.fp8 import FP8_DTYPE, Fp8Linear
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.token_layout import build_token_layout
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.speed.compiled import compile_dit, is_compiled, warm_up
from tests.fixtures.cuda_timing import median_cuda_ms
from tests.fixtures.random_dit import scaled_random_dit
from tests.fixtures.tiny_dit import write_tiny_dit
from tests.lora import loras

REPO = Path(__file__).resolve().parents[2]
LAYERS = 3
# fp32: the fused RMSNorm / RoPE kernels sum in another order than eager's; outputs are O(1).
FP32_TOL = dict(rtol=1e-5, atol=2e-5)
# Sequence lengths (text + image tokens) of the size sweep: 15, 24, 33, 42, 51 — none equal to a model
# width (32, 64, 128), which dynamo would give one symbol and so fix the length (see `warm_up`).
GRIDS = ((3, 5), (4, 6), (6, 7))
TEXT_LENGTHS = (0, 9)


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("compiled_dits")
    return {layout: write_tiny_dit(root / layout, layout, seed=7, num_layers=LAYERS).parent for layout in ("bf16", "fp8")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One compile cache for the module (as the app keeps one in its data dir); the process's cache
    settings are put back afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
            patch.delenv(name, raising=False)
        yield tmp_path_factory.mktemp("compile-cache")


def load(files, layout="bf16", dtype=torch.float32):
    return load_transformer(files[layout], dtype=dtype, fp8="keep")


def compiled_dit(files, cache, layout="bf16", dtype=torch.float32):
    return compile_dit(load(files, layout, dtype), cache_dir=cache)


def request(batch, n_text, grid, seed=0, dtype=torch.float32, t=None):
    """A conditional (n_text > 0, text rows projected already) or unconditional DiT call."""
    g = torch.Generator().manual_seed(seed)
    position_ids, segment_ids, indicator = build_token_layout(n_text, *grid, batch=batch)
    x = torch.randn(batch, position_ids.shape[1], 128, generator=g)
    t = torch.rand(batch, generator=g) if t is None else torch.full((batch,), t)
    text_hidden = torch.randn(batch, n_text, 64, generator=g).to(dtype) if n_text else None
    return (x, t, None, position_ids, segment_ids, indicator), dict(text_hidden=text_hidden)


def forward(model, call):
    args, kwargs = call
    with torch.inference_mode():
        return model(*args, **kwargs)


def test_all_blocks_share_one_graph_and_sizes_and_text_lengths_do_not_recompile(files, cache):
    torch._dynamo.reset()  # count from nothing, whatever ran before in this process
    eager, compiled = load(files), compiled_dit(files, cache)
    assert all(is_compiled(block) for block in compiled.layers) and not is_compiled(eager.layers[0])
    start = graphs()
    first = request(1, 9, GRIDS[0])
    torch.testing.assert_close(forward(compiled, first), forward(eager, first), **FP32_TOL)
    assert graphs() - start == 1  # three blocks, one compile

    for grid in GRIDS:
        for n_text in TEXT_LENGTHS:
            call = request(1, n_text, grid, seed=len(grid) + n_text)
            torch.testing.assert_close(forward(compiled, call), forward(eager, call), **FP32_TOL)
    assert graphs() - start == 1

    for batch in (2, 3):  # batch 1 is its own shape class (dynamo specialises size-1 dims): one more
        for grid, n_text in ((GRIDS[0], 9), (GRIDS[2], 0)):
            call = request(batch, n_text, grid, seed=batch)
            torch.testing.assert_close(forward(compiled, call), forward(eager, call), **FP32_TOL)
    assert graphs() - start == 2
    assert not counters["graph_break"]


def test_bf16_compiled_is_as_close_to_fp32_as_eager_bf16(files, cache):
    """Fusing moves where bf16 rounding happens (inside a fused chain values stay fp32), so compiled
    and eager bf16 differ by rounding; both must be equally far from the same weights in fp32."""
    reference = load(files, dtype=torch.float32)
    eager, compiled = load(files, dtype=torch.bfloat16), compiled_dit(files, cache, dtype=torch.bfloat16)
    call = request(1, 9, GRIDS[1], seed=3, dtype=torch.bfloat16, t=0.25)  # t is rounded to bf16 by the model
    want = forward(reference, call)
    scale = want.abs().max()
    eager_err = ((forward(eager, call) - want).abs().max() / scale).item()
    compiled_err = ((forward(compiled, call) - want).abs().max() / scale).item()
    apart = ((forward(compiled, call) - forward(eager, call)).abs().max() / scale).item()
    print(f"\nbf16 max error relative to the fp32 output's max: eager {eager_err:.4f}, compiled {compiled_err:.4f}, "
          f"compiled vs eager {apart:.4f}")
    assert compiled_err <= 1.5 * eager_err + 1e-3
    assert apart < 0.05


@pytest.fixture
def lora_file(tmp_path):
    return loras.write_comfyui(tmp_path / "style.safetensors", loras.fused_truth(21, rank=4, alpha=2.0, layers=range(LAYERS)))


def test_lora_apply_rescale_and_unload_after_compiling(files, cache, lora_file):
    eager, compiled = load(files), compiled_dit(files, cache)
    call = request(1, 9, GRIDS[2], seed=5)
    base = forward(compiled, call)

    for model in (eager, compiled):
        apply_lora(model, lora_file, name="style", scale=0.8)
    with_lora = forward(compiled, call)
    torch.testing.assert_close(with_lora, forward(eager, call), **FP32_TOL)
    assert (with_lora - base).abs().max() > 1e-2  # the LoRA does change the output

    for model in (eager, compiled):
        set_scale(model, "style", -1.5)
    torch.testing.assert_close(forward(compiled, call), forward(eager, call), **FP32_TOL)

    for model in (eager, compiled):
        remove(model)
    torch.testing.assert_close(forward(compiled, call), base, rtol=0, atol=0)  # the plain graph again
    torch.testing.assert_close(forward(eager, call), base, **FP32_TOL)


def test_a_new_lora_scale_does_not_recompile(files, cache, lora_file):
    compiled = compiled_dit(files, cache)
    apply_lora(compiled, lora_file, name="style", scale=0.8)
    call = request(1, 9, GRIDS[2], seed=5)
    forward(compiled, call)
    before = graphs()
    set_scale(compiled, "style", 0.3)
    forward(compiled, call)
    assert graphs() == before


def test_fp8_kept_linears_stay_fp8_and_match_eager(files, cache):
    eager, compiled = load(files, "fp8"), compiled_dit(files, cache, "fp8")
    assert isinstance(compiled.layers[0].attention.qkv, Fp8Linear)
    call = request(1, 9, GRIDS[0], seed=6)
    torch.testing.assert_close(forward(compiled, call), forward(eager, call), **FP32_TOL)
    assert compiled.layers[0].attention.qkv.weight.dtype == FP8_DTYPE


def test_weights_swapped_into_the_parameter_tables_are_the_ones_used(files, cache):
    """What a memory plan does (a new tensor in `module._parameters` for the duration of a call), here
    with other values, so a compiled graph that had kept the old weights would be caught."""
    compiled = compiled_dit(files, cache)
    other = load_transformer(write_tiny_dit(files["bf16"].parent / "other", "bf16", seed=8, num_layers=LAYERS).parent,
                             dtype=torch.float32)
    call = request(1, 9, GRIDS[1], seed=7)
    forward(compiled, call)
    for mine, theirs in zip(compiled.layers, other.layers):
        for module, source in zip(mine.modules(), theirs.modules()):
            for name, tensor in source._parameters.items():
                if tensor is not None:
                    module._parameters[name] = torch.nn.Parameter(tensor.clone(), requires_grad=False)
    for name in ("input_proj", "t_embedding", "adaln_proj", "embed_image_indicator", "final_layer"):
        getattr(compiled, name).load_state_dict(getattr(other, name).state_dict())
    torch.testing.assert_close(forward(compiled, call), forward(other, call), **FP32_TOL)


@pytest.mark.parametrize("mode", ["offload", "stream"])
def test_memory_plans_run_compiled_blocks(files, cache, mode):
    """The pipeline's order: place, then compile. On the CPU `stream` really copies each block's
    weights in its pre-hook, which runs eagerly around the compiled block."""
    eager = load(files)
    plan = MemoryPlan.create(mode, "cpu")
    compiled = compile_dit(plan.place(load(files)), cache_dir=cache)
    stored = compiled.layers[1].attention.qkv.weight
    seen = []
    compiled.layers[1].register_forward_pre_hook(lambda block, args: seen.append(block.attention.qkv.weight))
    call = request(2, 9, GRIDS[2], seed=8)
    with plan.running(compiled):
        out = forward(compiled, call)
    torch.testing.assert_close(out, forward(eager, call), **FP32_TOL)
    assert compiled.layers[1].attention.qkv.weight is stored
    if mode == "stream":
        assert seen[0] is not stored and seen[0].data_ptr() != stored.data_ptr()


def test_warm_up_compiles_each_shape_class_ahead_and_says_so(files, cache, tmp_path, monkeypatch):
    torch._dynamo.reset()  # as in a new process: the graphs come from the compile cache, or are compiled
    dit = compiled_dit(files, cache)
    lines = []
    start = graphs()
    seconds = warm_up([dit, dit], device="cpu", status=lines.append, batch_sizes=(1, 2), grid=(5, 5), text_tokens=6)
    assert graphs() - start == 2  # batch 1 and batch ≥ 2; conditional and unconditional share them
    assert lines[0].startswith("compiling the DiT blocks (") and lines[1:] == [f"DiT blocks compiled in {seconds:.0f} s"]
    for batch, grid, n_text in ((1, GRIDS[2], 9), (3, GRIDS[1], 0), (4, GRIDS[0], 9)):
        forward(dit, request(batch, n_text, grid))
    assert graphs() - start == 2  # the first requests found their graphs ready

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # an empty cache: a first start
    lines.clear()
    warm_up([dit], device="cpu", status=lines.append, grid=(5, 5), text_tokens=6, batch_sizes=(1, 2))
    assert lines[0] == ("compiling the DiT blocks (first start on this machine: about 24 s; "
                        "later starts read the cache)")


CHILD = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(2)
    from torch._dynamo.utils import counters
    from ideogram_app.loading.dit import load_transformer
    from ideogram_app.speed.compiled import compile_dit, warm_up
    dit = compile_dit(load_transformer(sys.argv[1], dtype=torch.float32), cache_dir=sys.argv[2])
    lines = []
    warm_up([dit], device="cpu", status=lines.append, grid=(4, 6), text_tokens=9)
    print(json.dumps({"status": lines, **counters["inductor"]}))
""")


def test_a_second_process_reads_the_compile_cache(files, cache):
    """A new process compiling the same DiT into the same folder finds every graph there (inductor's
    FX-graph cache counters) and generates no code."""
    torch._dynamo.reset()
    forward(compiled_dit(files, cache), request(1, 9, (4, 6)))  # from the cache, or compiled into it
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache) and any((cache / "fxgraph").glob("*/*"))

    child = subprocess.run([sys.executable, "-c", CHILD, str(files["bf16"]), str(cache)], cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    stats = json.loads(child.stdout.strip().splitlines()[-1])
    assert stats["status"][0] == "compiling the DiT blocks (reading the compile cache: a few seconds)"
    assert stats.get("fxgraph_cache_hit", 0) >= 1 and stats.get("fxgraph_cache_miss", 0) == 0, stats


def released_size_dit() -> Ideogram4DiT:
    """The released configuration (34 blocks, 9.3 B parameters) with scaled random bf16 weights made on
    the GPU."""
    return scaled_random_dit(Ideogram4Config(), "cuda").requires_grad_(False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_released_shapes_compiled_against_eager(tmp_path):
    """1024², one conditional forward (300 text tokens, N = 4396) and one unconditional (N = 4096):
    eager and compiled times (CUDA-event medians), compile time, the attention kernel used, and how far
    each bf16 run is from the same weights in fp32."""
    dit = released_size_dit()
    calls = {}
    g = torch.Generator(device="cuda").manual_seed(1)
    for label, n_text in (("cond T=300", 300), ("uncond", 0)):
        pos, seg, ind = (a.cuda() for a in build_token_layout(n_text, 64, 64))
        x = torch.randn(1, pos.shape[1], 128, device="cuda", generator=g)
        text = torch.randn(1, n_text, 4608, device="cuda", generator=g).bfloat16() if n_text else None
        calls[label] = ((x, torch.full((1,), 0.25, device="cuda"), None, pos, seg, ind), dict(text_hidden=text), ind == 2)

    def run(model, label):
        args, kwargs, _ = calls[label]
        with torch.inference_mode():
            return model(*args, **kwargs)

    eager_ms = {label: median_cuda_ms(lambda: run(dit, label), repeat=5) for label in calls}
    eager_out = {label: run(dit, label) for label in calls}
    compile_s = warm_up([compile_dit(dit, cache_dir=tmp_path / "cache")], device="cuda", status=print)
    compiled_ms = {label: median_cuda_ms(lambda: run(dit, label), repeat=5) for label in calls}
    compiled_out = {label: run(dit, label) for label in calls}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run(dit, "cond T=300")
        torch.cuda.synchronize()
    attention = sorted({e.name for e in prof.events() if any(k in e.name.lower() for k in ("attn", "fmha", "cudnn", "flash", "sdpa"))})

    with torch.device("meta"):
        reference = Ideogram4DiT(Ideogram4Config())
    reference.load_state_dict({k: v.float() for k, v in dit.state_dict().items()}, assign=True)  # the same weights in fp32
    reference.eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}; compile (warm-up, empty cache) {compile_s:.1f} s")
    print(f"attention kernels of the compiled forward: {attention}")
    for label in calls:
        image = calls[label][2]
        want = run(reference, label)[image]
        scale = want.abs().max()
        eager_err = ((eager_out[label][image] - want).abs().max() / scale).item()
        compiled_err = ((compiled_out[label][image] - want).abs().max() / scale).item()
        apart = ((compiled_out[label][image] - eager_out[label][image]).abs().max() / scale).item()
        print(f"{label:11s} eager {eager_ms[label]:7.1f} ms  compiled {compiled_ms[label]:7.1f} ms "
              f"({eager_ms[label] / compiled_ms[label]:.2f}x)  max error vs fp32: eager {eager_err:.4f}, "
              f"compiled {compiled_err:.4f}; compiled vs eager {apart:.4f}")
        assert compiled_err <= 1.5 * eager_err + 1e-3
        assert compiled_ms[label] < eager_ms[label]
