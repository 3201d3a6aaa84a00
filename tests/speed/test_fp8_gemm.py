"""FP8 GEMMs (fast mode): `Fp8GemmLinear` against a reference written out here from the definitions
(e4m3 rounding from the format's bit layout, per-token and per-row scales), `use_fp8_gemms` on the
tiny DiT, LoRAs on fast-mode layers, and the released shapes on a GPU.

CPU tests run everywhere (`torch._scaled_mm` has a CPU kernel). The GPU tests are marked `gpu` and
skipped without CUDA; on the GPU machine:
    python -m pytest tests/speed/test_fp8_gemm.py -m gpu -q -s
"""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ideogram_app.loading.dit import load_transformer
from ideogram_app.lora import apply_lora, remove, set_scale
from ideogram_app.lora.layer import LoraLinear
from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.token_layout import build_token_layout
from ideogram_app.speed.fp8_gemm import Fp8GemmLinear, quantize_weight, use_fp8_gemms
from tests.fixtures.cuda_timing import median_cuda_ms
from tests.fixtures.random_dit import scaled_random_dit
from tests.fixtures.tiny_dit import TINY_DIT_SIZES, quantize_fp8_rows, write_tiny_dit
from tests.lora import loras

LAYERS = TINY_DIT_SIZES["num_layers"]
CONVERTED = {f"layers.{i}.{m}" for i in range(LAYERS)
             for m in ("attention.qkv", "attention.o", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
# Measured on this CPU (torch 2.13): see docs/speed.md, "Fast mode (FP8 GEMMs)". The bounds leave
# room for other random draws, not for a different algorithm.
LINEAR_ERR_ACTIVATIONS_ONLY = 0.035  # measured 0.026
LINEAR_ERR_BOTH_QUANTISED = 0.05     # measured 0.037
TINY_DIT_ERR = 0.03                  # measured 0.015 (fp32 compute), 0.016 (bf16 compute)
DEEP_DIT_ERR = 0.1                   # measured 0.070


# --- the reference, from the definitions ----------------------------------------------------------

def e4m3_grid() -> torch.Tensor:
    """Every finite non-negative float8_e4m3fn value, in code order 0x00…0x7E: 4 exponent bits (bias 7),
    3 mantissa bits, exponent 0 subnormal (m/8 · 2^-6); 0x7F is NaN and there is no infinity."""
    values = []
    for code in range(0x7F):
        e, m = code >> 3, code & 7
        values.append(m / 8 * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return torch.tensor(values, dtype=torch.float64)


GRID = e4m3_grid()
FP8_MAX = 448.0


def round_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Round to the nearest e4m3 value, ties to the even code (even mantissa), |v| ≤ 448; float64."""
    a = v.double().abs()
    hi = torch.searchsorted(GRID, a).clamp(max=len(GRID) - 1)
    lo = (hi - 1).clamp(min=0)
    d_hi, d_lo = GRID[hi] - a, a - GRID[lo]
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    return torch.where(take_hi, GRID[hi], GRID[lo]) * v.double().sign()


def decode_e4m3(q: torch.Tensor) -> torch.Tensor:
    """The value of each float8_e4m3fn byte, read from its bits (sign bit 7, then the code)."""
    bits = q.view(torch.uint8).long()
    return torch.where(bits >= 0x80, -1.0, 1.0).double() * GRID[bits & 0x7F]


def quantise_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: s = max(max|x| / 448, 1e-12) in fp32, q = e4m3(clamp(x / s, ±448)) (division in fp32)."""
    x = x.float()
    s = (x.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
    return round_e4m3((x / s).clamp(-FP8_MAX, FP8_MAX)), s.double()


def reference_linear(x, weight_fp8, weight_scale, bias, magnitude=False):
    """dequant(quant(x)) @ dequant(W)ᵀ + b in float64; with `magnitude`, also |x̂| @ |Ŵ|ᵀ + |b|, the
    scale of the rounding error of any fp32 evaluation of the same sums."""
    q, s = quantise_tokens(x.reshape(-1, x.shape[-1]))
    w = decode_e4m3(weight_fp8) * weight_scale.double()[:, None]
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    y = ((q * s) @ w.T + b).reshape(*x.shape[:-1], -1)
    if not magnitude:
        return y
    return y, ((q * s).abs() @ w.abs().T + b.abs()).reshape(y.shape)


def rel_err(got, want):
    """Norm-wise relative error ‖got − want‖ / ‖want‖."""
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def make_x(*shape, seed=0):
    """Gaussian rows whose magnitudes span 1e-3…1e3, so each token really needs its own scale."""
    g = torch.Generator().manual_seed(seed)
    magnitude = 10 ** (torch.rand(*shape[:-1], 1, generator=g) * 6 - 3)
    return torch.randn(*shape, generator=g) * magnitude


def fp8_layer(out_f, in_f, bias=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    layer = Fp8Linear(in_f, out_f, bias=bias, dtype=torch.float32)
    layer.weight, layer.weight_scale = quantize_fp8_rows(torch.randn(out_f, in_f, generator=g) * in_f**-0.5)
    if bias:
        layer.bias.data = torch.randn(out_f, generator=g) * 0.1
    return layer


# --- the layer ------------------------------------------------------------------------------------

def test_the_reference_rounds_like_the_e4m3_format():
    """The hand-written rounding agrees with torch's float8 cast on values covering every binade,
    subnormals, exact ties and ±448; the decoder reads all 255 non-NaN codes as torch does."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]
    assert torch.equal(decode_e4m3(codes.view(torch.float8_e4m3fn)), codes.view(torch.float8_e4m3fn).double())
    ties = (GRID[:-1] + GRID[1:]) / 2
    v = torch.cat([ties, -ties, GRID, torch.rand(20000, dtype=torch.float64) * 896 - 448]).float()
    assert torch.equal(round_e4m3(v), v.to(torch.float8_e4m3fn).double())


def test_output_equals_the_reference_with_leading_dims_bias_and_a_zero_token():
    layer = Fp8GemmLinear.from_fp8(fp8_layer(48, 64))
    x = make_x(3, 5, 64)
    x[1, 2] = 0  # an all-zero token: the scale floor keeps it finite, its output is the bias
    with torch.no_grad():
        got = layer(x)
    want, magnitude = reference_linear(x, layer.weight, layer.weight_scale, layer.bias, magnitude=True)
    assert got.shape == (3, 5, 48) and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    assert ((got.double() - want).abs() <= 1e-6 * magnitude).all()  # fp32 accumulation of 64 terms: ≲ 64 · 2^-24
    assert torch.equal(got[1, 2], layer.bias)


def test_bf16_activations_give_bf16_outputs_close_to_the_reference():
    layer = Fp8GemmLinear.from_fp8(fp8_layer(32, 64, bias=False))
    x = make_x(7, 64, seed=3).bfloat16()
    with torch.no_grad():
        got = layer(x)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, reference_linear(x, layer.weight, layer.weight_scale, None)) < 4e-3  # bf16 output rounding


def test_relative_error_against_the_float_linear_is_a_few_percent():
    """Random Gaussian data, 256 tokens × 512 → 384. Against the layer holding the dequantised fp8
    weights (what the weight-only path computes) only the activation quantisation differs; against
    an fp32 linear whose weights are quantised here too, both do."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 512, generator=g)
    fp8 = fp8_layer(384, 512)
    float_linear = nn.Linear(512, 384)
    with torch.no_grad():
        float_linear.weight.copy_(torch.randn(384, 512, generator=g) * 512**-0.5)
        activations_only = rel_err(Fp8GemmLinear.from_fp8(fp8)(x), fp8(x))
        both = rel_err(Fp8GemmLinear.from_linear(float_linear)(x), float_linear(x))
    print(f"relative error: activations quantised {activations_only:.4f}, activations and weights {both:.4f}")
    assert activations_only < LINEAR_ERR_ACTIVATIONS_ONLY
    assert both < LINEAR_ERR_BOTH_QUANTISED


def test_quantisation_traces_into_one_graph_under_compile():
    """Norm·modulate → Fp8GemmLinear compiles without a graph break (so inductor can fuse the
    activation quantisation into the producer); aot_eager keeps the arithmetic, so results are equal."""
    layer = Fp8GemmLinear.from_fp8(fp8_layer(48, 64, bias=False))

    def block(h, scale):
        return layer(F.rms_norm(h, (64,), eps=1e-5) * (1 + scale))

    h, scale = make_x(2, 9, 64, seed=4), torch.randn(2, 1, 64) * 0.1
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager", dynamic=False)
    with torch.no_grad():
        assert torch.equal(compiled(h, scale), block(h, scale))


# --- the DiT --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dit_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast_dits")
    return {layout: (root / layout, write_tiny_dit(root / layout, layout, seed=7)) for layout in ("fp8", "bf16")}


@pytest.fixture
def load(dit_files):
    def load(layout, dtype=torch.float32):
        return load_transformer(dit_files[layout][0], dtype=dtype, fp8="keep").eval()
    return load


@pytest.fixture(scope="module")
def inputs():
    """Two prompts left-padded (segment mask path), text and image rows, features on text rows only."""
    g = torch.Generator().manual_seed(1)
    pos, seg, ind = build_token_layout([6, 3], 3, 4, batch=2)
    x = torch.randn(2, pos.shape[1], 128, generator=g)
    llm = torch.randn(2, pos.shape[1], 416, generator=g) * (ind == 3).unsqueeze(-1)
    return x, torch.tensor([0.3, 0.8]), llm, pos, seg, ind


def run(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def image_rows(out, inputs):
    return out[inputs[-1] == 2]


def test_converts_exactly_the_block_gemms_and_takes_fp8_weights_as_stored(load):
    model = load("fp8")
    modules = dict(model.named_modules())
    state = model.state_dict()
    assert use_fp8_gemms(model) is model
    now = dict(model.named_modules())
    assert {name for name, m in now.items() if isinstance(m, Fp8GemmLinear)} == CONVERTED
    for name in CONVERTED:  # the checkpoint's fp8 tensors themselves: no copy, no re-quantisation
        assert now[name].weight is modules[name].weight and now[name].weight_scale is modules[name].weight_scale
    for name, module in now.items():
        if name not in CONVERTED:
            assert module is modules[name] and type(module) is type(modules[name]), name
    assert type(now["input_proj"]) is Fp8Linear and type(now["layers.0.adaln_modulation"]) is Fp8Linear
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(after[k] is state[k] or torch.equal(after[k].view(torch.uint8), state[k].view(torch.uint8)) for k in state)


def test_a_float_linear_is_quantised_per_row_by_the_official_recipe_and_freed(load, dit_files):
    model = load("bf16")
    from safetensors.torch import load_file

    stored = load_file(dit_files["bf16"][1])
    old = {name: weakref.ref(model.get_submodule(name).weight) for name in CONVERTED}
    untouched = {k: v for k, v in model.state_dict(keep_vars=True).items() if k.rpartition(".")[0] not in CONVERTED}
    use_fp8_gemms(model)
    gc.collect()
    assert all(ref() is None for ref in old.values())  # no copy of an old weight survives
    for name in CONVERTED:
        layer = model.get_submodule(name)
        want_q, want_scale = quantize_fp8_rows(stored[name + ".weight"].float())
        assert torch.equal(layer.weight.view(torch.uint8), want_q.view(torch.uint8)), name
        assert torch.equal(layer.weight_scale, want_scale), name
    after = model.state_dict(keep_vars=True)
    assert all(after[k] is v for k, v in untouched.items())
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in ("input_proj", "llm_cond_proj", "t_embedding.mlp_in",
               "adaln_proj", "layers.1.adaln_modulation", "final_layer.linear", "final_layer.adaln_modulation"))


def test_a_bf16_copy_of_the_fp8_release_requantises_to_the_same_codes(dit_files):
    """The bf16 repackage holds the release's fp8 weights dequantised to bf16. Quantising those per row
    again gives back every e4m3 code of the release, with scales within 2^-8: fast mode from the bf16
    files runs what it runs from the fp8 files."""
    released = load_transformer(dit_files["fp8"][0], dtype=torch.bfloat16, fp8="keep")
    repackaged = use_fp8_gemms(load_transformer(dit_files["fp8"][0], dtype=torch.bfloat16, fp8="dequantize"))
    for name in CONVERTED:
        want, got = released.get_submodule(name), repackaged.get_submodule(name)
        assert torch.equal(got.weight.view(torch.uint8), want.weight.view(torch.uint8)), name
        assert ((got.weight_scale / want.weight_scale - 1).abs() <= 2**-8).all(), name


def test_quantise_weight_in_row_blocks_equals_the_recipe_on_a_matrix_wider_than_one_block():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, (1 << 20) // 16 + 3, generator=g).bfloat16()  # ≈ 16 rows per block, last block partial
    q, scale = quantize_weight(w)
    want_q, want_scale = quantize_fp8_rows(w.float())
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(scale, want_scale)


def test_converting_twice_changes_nothing(load):
    model = use_fp8_gemms(load("fp8"))
    layers = {name: model.get_submodule(name) for name in CONVERTED}
    use_fp8_gemms(model)
    assert all(model.get_submodule(name) is layer for name, layer in layers.items())


def test_nf4_and_unaligned_layers_are_refused_by_name_before_anything_changes(load):
    model = load("fp8")
    packed = nn.Linear(128, 64, bias=False)  # what bitsandbytes' Linear4bit stores: packed uint8 [out·in/2, 1]
    packed.weight = nn.Parameter(torch.zeros(128 * 64 // 2, 1, dtype=torch.uint8), requires_grad=False)
    model.layers[1].feed_forward.w2 = packed
    with pytest.raises(ValueError, match=r"'layers\.1\.feed_forward\.w2' is Linear with torch\.uint8 weights \(bitsandbytes NF4"):
        use_fp8_gemms(model)
    assert not any(isinstance(m, Fp8GemmLinear) for m in model.modules())

    cfg = Ideogram4Config(num_layers=1, emb_dim=64, num_heads=2, intermediate_size=136, adanln_dim=32,
                          llm_features_dim=64, mrope_section=(8, 4, 4))
    with torch.device("meta"):
        unaligned = Ideogram4DiT(cfg)
    with pytest.raises(ValueError, match=r"'layers\.0\.feed_forward\.w1' maps 64 → 136, .*multiples of 16"):
        use_fp8_gemms(unaligned)
    assert not any(isinstance(m, Fp8GemmLinear) for m in unaligned.modules())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_dit_fast_mode_stays_close_to_eager(load, inputs, dtype):
    """Fast vs the same fp8-kept weights run weight-only (the eager path): only activation
    quantisation differs."""
    eager = load("fp8", dtype)
    fast = use_fp8_gemms(load("fp8", dtype))
    want, got = image_rows(run(eager, inputs), inputs), image_rows(run(fast, inputs), inputs)
    err = rel_err(got, want)
    print(f"tiny DiT, {dtype}: fast vs eager relative error {err:.4f}, max-abs relative "
          f"{((got - want).abs().max() / want.abs().max()).item():.4f}")
    assert 0 < err < TINY_DIT_ERR


# --- LoRAs on fast-mode layers --------------------------------------------------------------------

def by_hand(model, truth, scale):
    """Forward hooks adding s·(alpha/r)·B(A x) (float64) to each targeted layer's output."""
    handles = []
    for name, (a, b, alpha) in truth.items():
        factor = scale * alpha / a.shape[0]

        def hook(module, args, out, a=a, b=b, factor=factor):
            return out + (factor * (args[0].double() @ a.double().T @ b.double().T)).to(out.dtype)
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    return handles


def hand_merged_fast(model, truth, scale):
    """Each converted layer's weight replaced by quantise_rows(dequant(W_fp8) + s·(alpha/r)·B A), all
    in fp32 as the merge is defined (docs/lora.md), with the official recipe from the fixtures."""
    for name, (a, b, alpha) in truth.items():
        layer = model.get_submodule(name)
        if name in CONVERTED:
            total = layer.weight.float() * layer.weight_scale[:, None] + (b.float() @ a.float()) * (scale * (alpha / a.shape[0]))
            layer.weight, layer.weight_scale = quantize_fp8_rows(total)
        else:
            with torch.no_grad():
                layer.weight.copy_(layer.weight.float() + (b.float() @ a.float()) * (scale * (alpha / a.shape[0])))
    return model


@pytest.fixture
def lora_files(tmp_path):
    everywhere = loras.fused_truth(11, rank=4, alpha=2.0, globals_=True)
    blocks = loras.fused_truth(12, rank=6, alpha=9.0)
    return (everywhere, loras.write_comfyui(tmp_path / "everywhere.safetensors", everywhere),
            blocks, loras.write_comfyui(tmp_path / "blocks.safetensors", blocks))


def test_unmerged_lora_on_fast_layers_adds_its_term_on_the_unquantised_input(load, inputs, lora_files):
    everywhere, path, _, _ = lora_files
    model = use_fp8_gemms(load("fp8"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base_out = run(model, inputs)
    apply_lora(model, path, name="ink", scale=0.7)
    assert all(isinstance(model.get_submodule(n).base, Fp8GemmLinear) for n in CONVERTED)
    seen = {}  # each fast layer's input and output inside the LoRA'd model

    def record(name):
        def hook(module, args, out):
            seen[name] = (args[0], out)
        return hook
    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in CONVERTED]
    got = run(model, inputs)
    for handle in handles:
        handle.remove()
    for name in CONVERTED:  # layer by layer: the fast base's output plus the hand-computed LoRA term
        x, out = seen[name]
        a, b, alpha = everywhere[name]
        lora = 0.7 * alpha / a.shape[0] * (x.double() @ a.double().T @ b.double().T)
        with torch.no_grad():
            want = model.get_submodule(name).base(x).double() + lora
        assert ((out.double() - want).abs() <= 1e-6 * (want.abs() + lora.abs()).amax()).all(), name
    # The whole DiT against hooks adding the same terms to a LoRA-free fast DiT. Not bit-equal: the fp32
    # sums are rounded differently, and where that moves an activation across an e4m3 rounding boundary
    # the next GEMM sees a value one e4m3 step (6 %) away, so ~1e-4 differences are expected.
    reference = use_fp8_gemms(load("fp8"))
    handles = by_hand(reference, everywhere, 0.7)
    want = run(reference, inputs)
    for handle in handles:
        handle.remove()
    assert rel_err(image_rows(got, inputs), image_rows(want, inputs)) < 1e-3
    remove(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert all(torch.equal(v.view(torch.uint8), state[k].view(torch.uint8)) for k, v in model.state_dict().items())
    assert torch.equal(run(model, inputs), base_out)


def test_merged_lora_requantises_rows_and_unmerge_restores_the_fp8_bits(load, inputs, lora_files):
    _, _, blocks, path = lora_files
    model = use_fp8_gemms(load("bf16"))
    originals = {name: (model.get_submodule(name).weight, model.get_submodule(name).weight_scale) for name in CONVERTED}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base_out = run(model, inputs)
    apply_lora(model, path, name="style", scale=0.5, merge=True)
    want_model = hand_merged_fast(use_fp8_gemms(load("bf16")), blocks, 0.5)
    for name in CONVERTED:
        got, want = model.get_submodule(name).base, want_model.get_submodule(name)
        assert torch.equal(got.weight.view(torch.uint8), want.weight.view(torch.uint8)), name
        assert torch.equal(got.weight_scale, want.weight_scale), name
    assert torch.equal(run(model, inputs), run(want_model, inputs))

    set_scale(model, "style", -0.25)  # rebuilt from the kept fp8 original, not from the merged weight
    want_model = hand_merged_fast(use_fp8_gemms(load("bf16")), blocks, -0.25)
    assert torch.equal(run(model, inputs), run(want_model, inputs))

    remove(model)
    for name, (weight, scale) in originals.items():  # on the host the very tensors come back
        assert model.get_submodule(name).weight is weight and model.get_submodule(name).weight_scale is scale
    assert all(torch.equal(v.view(torch.uint8), state[k].view(torch.uint8)) for k, v in model.state_dict().items())
    assert torch.equal(run(model, inputs), base_out)


def test_converting_a_dit_that_carries_loras_equals_converting_first(load, inputs, lora_files):
    _, everywhere_path, _, blocks_path = lora_files
    before = load("bf16")
    apply_lora(before, everywhere_path, name="ink", scale=0.7)
    apply_lora(before, blocks_path, name="style", scale=0.5, merge=True)
    use_fp8_gemms(before)

    after = use_fp8_gemms(load("bf16"))
    apply_lora(after, everywhere_path, name="ink", scale=0.7)
    apply_lora(after, blocks_path, name="style", scale=0.5, merge=True)
    got, want = before.state_dict(), after.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k].view(torch.uint8), want[k].view(torch.uint8)) for k in want)
    assert torch.equal(run(before, inputs), run(after, inputs))

    remove(before)
    plain = use_fp8_gemms(load("bf16"))
    got, want = before.state_dict(), plain.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k].view(torch.uint8), want[k].view(torch.uint8)) for k in want)
    assert torch.equal(run(before, inputs), run(plain, inputs))


# --- released shapes on a GPU (the lead runs these) -----------------------------------------------

def needs_cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))
GPU_FORWARD_ERR = 0.02  # acceptance for one forward of the fast DiT against the bf16 DiT


def fast_and_reference(cfg: Ideogram4Config, device: str, dtype: torch.dtype = torch.bfloat16):
    """A DiT with random weights (linears N(0, 1/in), norms 1 + N(0, 0.1²), the rest N(0, 0.1²)), its
    block GEMM weights stored as per-row e4m3 (as released) and held dequantised — what
    `fp8="dequantize"` loads — and the fast DiT sharing every other tensor, its GEMM weights the fp8
    tensors themselves (as `fp8="keep"` loads). Returns (reference, fast)."""
    reference = scaled_random_dit(cfg, device, dtype)
    fp8 = {}
    with torch.no_grad():
        for name in gemm_names(cfg.num_layers):
            layer = reference.get_submodule(name)
            q, scale = quantize_weight(layer.weight)
            fp8[name] = (q, scale)
            layer.weight.copy_((q.float() * scale[:, None]).to(dtype))
    with torch.device("meta"):
        fast = Ideogram4DiT(cfg)
    fast.load_state_dict(reference.state_dict(), assign=True)
    for name, (q, scale) in fp8.items():
        parent, _, child = name.rpartition(".")
        layer = Fp8Linear(q.shape[1], q.shape[0], bias=False, device="meta")
        layer.weight, layer.weight_scale = q, scale
        setattr(fast.get_submodule(parent), child, layer)
    return reference, use_fp8_gemms(fast).eval()


def forward_error(reference, fast, text_tokens, grid, device):
    """Norm-wise relative error of one forward on the image rows (t = 0.25, exact in bf16)."""
    emb = reference.cfg.emb_dim
    g = torch.Generator(device=device).manual_seed(1)
    pos, seg, ind = (a.to(device) for a in build_token_layout(text_tokens, grid, grid))
    x = torch.randn(1, pos.shape[1], 128, device=device, generator=g)
    text = torch.randn(1, text_tokens, emb, device=device, generator=g) if text_tokens else None
    t = torch.full((1,), 0.25, device=device)
    with torch.inference_mode():
        want = reference(x, t, None, pos, seg, ind, text_hidden=text)[ind == 2]
        got = fast(x, t, None, pos, seg, ind, text_hidden=text)[ind == 2]
    return rel_err(got, want)


def test_a_deep_narrow_dit_shows_how_the_error_grows_with_depth():
    """34 blocks of width 256 (the released depth) on 16 text + 64 image tokens, fp32 compute: the
    per-GEMM activation error (≈ 2.6 %) compounds through the blocks."""
    cfg = Ideogram4Config(num_layers=34, emb_dim=256, num_heads=4, intermediate_size=672, adanln_dim=64,
                          llm_features_dim=64, mrope_section=(8, 8, 8))
    err = forward_error(*fast_and_reference(cfg, "cpu", torch.float32), 16, 8, "cpu")
    print(f"34 layers × 256 wide, fp32: fast vs weight-only relative error {err:.4f}")
    assert err < DEEP_DIT_ERR


def gemm_names(num_layers):
    return [f"layers.{i}.{m}" for i in range(num_layers)
            for m in ("attention.qkv", "attention.o", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")]


def released_errors(text_tokens):
    """(fast vs bf16, bf16 vs fp32, fast vs fp32) for one forward at the released shapes. A function of
    its own so the ≈ 65 GB of models are freed before the caller asserts (a failing test's frame is
    kept by pytest, and the next case needs the memory again)."""
    reference, fast = fast_and_reference(Ideogram4Config(), "cuda")
    err = forward_error(reference, fast, text_tokens, 64, "cuda")
    with torch.device("meta"):
        exact = Ideogram4DiT(Ideogram4Config())
    exact.load_state_dict({k: v.float() for k, v in reference.state_dict().items()}, assign=True)
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False  # a true fp32 reference
    try:
        errors = (err, forward_error(exact.eval(), reference, text_tokens, 64, "cuda"),
                  forward_error(exact, fast, text_tokens, 64, "cuda"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    del reference, fast, exact
    gc.collect()
    torch.cuda.empty_cache()
    return errors


@needs_cuda
@pytest.mark.parametrize("text_tokens", [300, 0], ids=["cond N=4396", "uncond N=4096"])
def test_gpu_released_shapes_forward_error(text_tokens):
    """One forward at 1024² (N = 4396 with 300 text tokens, 4096 without). Also printed for scale: how
    far the bf16 DiT itself and the fast DiT are from the same weights in fp32."""
    err, bf16_vs_fp32, fast_vs_fp32 = released_errors(text_tokens)
    print(f"\nreleased shapes, 34 layers, N={text_tokens + 4096}: fast vs bf16 relative error {err:.4f} "
          f"(for scale: bf16 vs fp32 {bf16_vs_fp32:.4f}, fast vs fp32 {fast_vs_fp32:.4f})")
    assert err <= GPU_FORWARD_ERR


@needs_cuda
def test_gpu_compiled_fast_mode_forward_time_and_error():
    """What users run: `apply_speed_mode(..., "fast")` (FP8 GEMMs + the per-block compile) against
    `"exact"` (bf16, the same compile) on the same weights at 1024², cond N = 4396 and uncond N = 4096.
    Prints the forward times and the error; the acceptance bound is asserted on the eager forward above."""
    from ideogram_app.speed import apply_speed_mode

    reference, fast = fast_and_reference(Ideogram4Config(), "cuda")
    apply_speed_mode(reference, "exact")
    apply_speed_mode(fast, "fast")
    g = torch.Generator(device="cuda").manual_seed(1)
    for text_tokens in (300, 0):
        pos, seg, ind = (a.cuda() for a in build_token_layout(text_tokens, 64, 64))
        x = torch.randn(1, pos.shape[1], 128, device="cuda", generator=g)
        text = torch.randn(1, text_tokens, 4608, device="cuda", generator=g) if text_tokens else None
        t = torch.full((1,), 0.25, device="cuda")
        with torch.inference_mode():
            runs = {name: (lambda m=model: m(x, t, None, pos, seg, ind, text_hidden=text))
                    for name, model in (("exact", reference), ("fast", fast))}
            err = rel_err(runs["fast"]()[ind == 2], runs["exact"]()[ind == 2])
            ms = {name: median_cuda_ms(run, repeat=5) for name, run in runs.items()}
        print(f"\ncompiled, N={pos.shape[1]}: exact {ms['exact']:.1f} ms, fast {ms['fast']:.1f} ms "
              f"({ms['exact'] / ms['fast']:.2f}x); fast vs exact relative error {err:.4f}")
        assert err < 0.1


@needs_cuda
def test_gpu_gemm_time_bf16_vs_fp8_with_the_quantisation_compiled():
    """Each block GEMM with a producer, compiled (as in the per-block compile): RMSNorm·modulate before
    qkv, w1, w3 (as in the block) and before o (a stand-in for the head-concatenating copy, which is
    cheaper); SiLU·mul before w2. Prints the table; asserts only that fp8 agrees with bf16."""
    torch.manual_seed(0)
    shapes = {"qkv": (4608, 13824), "o": (4608, 4608), "w1/w3": (4608, 12288), "w2": (12288, 4608)}
    print(f"\n{'gemm':6s} {'tokens':>6s} {'bf16 ms':>8s} {'fp8 ms':>8s} {'speed-up':>8s} {'fp8 TFLOP/s':>11s}")
    for label, (k, n) in shapes.items():
        linear = nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16).eval()
        fast = Fp8GemmLinear.from_linear(linear)
        with torch.no_grad():
            linear.weight.copy_(fast.dequantize(torch.bfloat16))
        for tokens in (4396, 4096):
            if label == "w2":
                a = torch.randn(1, tokens, k, device="cuda", dtype=torch.bfloat16)
                b = torch.randn(1, tokens, k, device="cuda", dtype=torch.bfloat16)

                def make(layer):
                    return torch.compile(lambda a, b: layer(F.silu(a) * b), fullgraph=True, dynamic=False)
            else:
                a = torch.randn(1, tokens, k, device="cuda", dtype=torch.bfloat16)
                b = torch.randn(1, 1, k, device="cuda", dtype=torch.bfloat16) * 0.1

                def make(layer):
                    return torch.compile(lambda a, b: layer(F.rms_norm(a, (k,), eps=1e-5) * (1 + b)), fullgraph=True, dynamic=False)
            f_bf16, f_fp8 = make(linear), make(fast)
            with torch.inference_mode():
                assert rel_err(f_fp8(a, b), f_bf16(a, b)) < 0.04
                ms_bf16, ms_fp8 = median_cuda_ms(lambda: f_bf16(a, b), 3, 20), median_cuda_ms(lambda: f_fp8(a, b), 3, 20)
            print(f"{label:6s} {tokens:6d} {ms_bf16:8.3f} {ms_fp8:8.3f} {ms_bf16 / ms_fp8:7.2f}x {2 * tokens * k * n / ms_fp8 / 1e9:11.0f}")


@needs_cuda
def test_gpu_conversion_peaks_at_the_model_plus_one_layer():
    cfg = Ideogram4Config(num_layers=4)
    with torch.device("meta"):
        model = Ideogram4DiT(cfg).to(torch.bfloat16)
    model = model.to_empty(device="cuda")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    use_fp8_gemms(model)
    peak = torch.cuda.max_memory_allocated() - before
    largest_fp8_layer = 3 * 4608 * 4608
    print(f"\nconversion peak above the loaded model: {peak / 2**20:.1f} MiB (largest fp8 layer {largest_fp8_layer / 2**20:.1f} MiB)")
    assert peak <= largest_fp8_layer + 32 * 2**20


@needs_cuda
def test_gpu_nf4_dit_is_refused_by_layer_name(tmp_path):
    pytest.importorskip("bitsandbytes")
    write_tiny_dit(tmp_path, "nf4", seed=7)
    model = load_transformer(tmp_path, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"'layers\.0\.attention\.qkv' is Linear4bit .*NF4"):
        use_fp8_gemms(model)
