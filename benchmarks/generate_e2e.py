"""End-to-end seconds per image at the released shapes with random weights, one configuration per
process (GPU only): a speed mode, a memory mode and one or two devices, over a list of cases.

    python benchmarks/generate_e2e.py --mode exact --cases 1024x1024:300:quality,1024x1024:300:turbo \
        --peer --out e2e.jsonl

Each case (SIZE:TEXT_TOKENS:PRESET) is one call of the real pipeline — text encoder on T tokens, every
denoising step of the preset, VAE decode, PIL conversion — timed from the call to the returned image.
Before it runs a 2-step warm-up call at that size and text length (where compiling would happen); for
the first case the warm-up is a whole image instead, whose time is the first-image latency after
loading, compile included (cold, or with a warm `--compile-cache`). The device is synchronised after
every step to time the steps (their median goes into the row; the end-to-end time includes these
syncs), unless `--no-step-sync`: then nothing waits between steps, as when an application calls the
pipeline, and the row has no step median. The text-feature cache is cleared before each call, so the encoder runs every time.

`--peer` times diffusers' `Ideogram4Transformer2DModel` (holding our conditional DiT's weights) in the
same process: one guided step as its pipeline lays it out (text padded to 2048 with a dense mask for the
conditional pass, an all-True mask for the unconditional one), so each row carries the peer's step
time next to ours. `--weights fp8` stores every block linear as e4m3 with per-row scales (as the
official fp8 release does); `full` mode then widens them once, like `fp8="dequantize"`.
`--fidelity` (with --mode fast) reports the per-forward relative error of the converted DiTs against
the same DiTs in bf16, before converting. `--save-latents DIR` writes the final latents of the first
quality-preset case, for comparing modes across processes (`--compare A.pt B.pt`).

One JSON line per case goes to `--out` (appended), plus one line of facts about the run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo (ideogram_app, tests.fixtures) when run as a script from anywhere

from ideogram_app.model.ideogram4_dit import Ideogram4Config, Ideogram4DiT
from ideogram_app.model.token_layout import build_token_layout


def build_real_size(factory, device: str, seed: int):
    """A released-size module with seeded random bf16 weights, made on `device` (no checkpoint).
    The same seed gives the same weights in every process on the same kind of GPU."""
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device=device).to(torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.fill_(1.0)
    return module.eval().requires_grad_(False)


def store_blocks_as_fp8(dit: torch.nn.Module) -> None:
    """Every linear inside the blocks becomes an `Fp8Linear` quantised per row, as in the fp8 release."""
    from ideogram_app.model.fp8 import Fp8Linear
    from ideogram_app.speed.fp8_gemm import quantize_weight

    for block in dit.layers:
        for name, linear in list(block.named_modules()):
            if type(linear) is torch.nn.Linear:
                stored = Fp8Linear(linear.in_features, linear.out_features, linear.bias is not None,
                                   device="meta", dtype=torch.bfloat16)
                stored.weight, stored.weight_scale = quantize_weight(linear.weight)
                stored.bias = linear.bias
                parent, _, child = name.rpartition(".")
                setattr(block.get_submodule(parent) if parent else block, child, stored)


def build_pipeline(args):
    from transformers import Qwen3VLTextConfig, Qwen3VLTextModel

    from ideogram_app.loading.conversion import convert_fp8_linears
    from ideogram_app.loading.text_encoder import QWEN3_VL_8B_TEXT_CONFIG
    from ideogram_app.model.flux2_vae import Flux2VAE, Flux2VAEConfig
    from ideogram_app.model.prompt_tokenizer import PromptTokenizer
    from ideogram_app.model.text_encoder import Ideogram4TextEncoder
    from ideogram_app.pipeline.pipeline import Ideogram4Pipeline
    from ideogram_app.pipeline.placement import MemoryPlan
    from tests.fixtures.tiny_repo import write_tiny_repo

    repo = write_tiny_repo(Path(args.scratch) / "tokenizer-repo")  # only its tokenizer is used (but for --smoke)
    if args.smoke:  # the tiny test model on the CPU: checks this script, measures nothing
        return Ideogram4Pipeline.from_pretrained(repo, device="cpu", memory="cpu", torch_dtype=torch.float32)
    tokenizer = PromptTokenizer(repo / "tokenizer")
    devices = args.devices.split(",")
    build_on = devices[0]
    dits = [build_real_size(lambda: Ideogram4DiT(Ideogram4Config()), build_on, seed) for seed in (1, 2)]
    if args.weights == "fp8":
        for dit in dits:
            store_blocks_as_fp8(dit)
            if args.memory == "full" and args.mode != "fast":
                convert_fp8_linears(dit, "dequantize", torch.bfloat16)
    text_model = build_real_size(lambda: Qwen3VLTextModel(Qwen3VLTextConfig(**QWEN3_VL_8B_TEXT_CONFIG)), build_on, 3)
    text_encoder = Ideogram4TextEncoder(text_model, tokenizer)
    vae = build_real_size(lambda: Flux2VAE(Flux2VAEConfig()), build_on, 4)
    plan = MemoryPlan.create(args.memory, devices[0])
    for module in (*dits, text_encoder, vae):
        plan.place(module)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the weights were made on the GPU: offloaded ones leave cached segments behind
    pipe = Ideogram4Pipeline(dits[0], text_encoder, tokenizer, vae, dits[1], plan, model_name="random weights, released shapes")
    if len(devices) == 2:
        pipe.use_devices(devices)
    return pipe


def prompt_with_tokens(tokenizer, count: int) -> str:
    """A plain-text prompt the tokenizer counts as exactly `count` tokens (chat template included)."""
    words = ["poster", "red", "circle", "blue", "square", "the", "word", "HELLO", "on", "a", "wall"]
    text, i = "", 0
    while tokenizer.count(text) < count:
        text += ("" if not text else " ") + words[i % len(words)]
        i += 1
    while tokenizer.count(text) > count:
        text = text.rsplit(" ", 1)[0]
    return text


def synced(device_list):
    for device in device_list:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def peer_step_ms(theirs, cfg: Ideogram4Config, n_text: int, grid_h: int, grid_w: int, device: str) -> float:
    """One guided step of diffusers' transformer as its pipeline calls it (median of 3 after 1 warm-up)."""
    n_img = grid_h * grid_w
    gen = torch.Generator(device=device).manual_seed(5)
    t = torch.full((1,), 0.3, device=device, dtype=torch.bfloat16)

    def inputs(text: int, width: int):
        pos, seg, ind = (a[:1].to(device) for a in build_token_layout([text, width], grid_h, grid_w, batch=2))
        length = width + n_img
        x = torch.randn(1, length, cfg.in_channels, device=device, generator=gen).bfloat16()
        feats = torch.randn(1, length, cfg.llm_features_dim, device=device, generator=gen).bfloat16()
        return x, feats, pos, seg, ind

    cond, uncond = inputs(n_text, 2048), inputs(0, 0)

    def step():
        theirs(*cond[:1], t, *cond[1:], return_dict=False)
        theirs(*uncond[:1], t, *uncond[1:], return_dict=False)

    times = []
    with torch.inference_mode():
        step()
        for _ in range(3):
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def forward_outputs(pipe, device) -> list[torch.Tensor]:
    """Conditional (T = 300) and unconditional velocities of the two DiTs at 1024² on fixed inputs."""
    gen = torch.Generator(device=device).manual_seed(9)
    outs = []
    for dit, text in ((pipe.transformer, 300), (pipe.unconditional_transformer, 0)):
        dev = next(dit.parameters()).device
        pos, seg, ind = (a[:1].to(dev) for a in build_token_layout([text, text], 64, 64, batch=2))
        x = torch.randn(1, pos.shape[1], 128, device=device, generator=gen).to(dev)
        hidden = None
        if text:
            hidden = 0.5 * torch.randn(1, text, dit.cfg.emb_dim, device=device, generator=gen).to(dev, torch.bfloat16)
        with torch.inference_mode():
            outs.append(dit(x, torch.full((1,), 0.5, device=dev), None, pos, seg, ind, text_hidden=hidden)[:, text:].float().cpu())
    return outs


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run(args) -> None:
    from dit_forward import diffusers_copy
    from ideogram_app.pipeline.sizes import parse_size, token_grid

    out = open(args.out, "a")

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
        out.flush()

    started = time.perf_counter()
    pipe = build_pipeline(args)
    device_list = list(pipe.devices)
    built_s = time.perf_counter() - started
    config = {"label": args.label, "mode": args.mode, "memory": args.memory, "devices": args.devices, "weights": args.weights}
    theirs = None
    if args.peer:
        peer_device = "cuda:1" if args.memory != "full" and torch.cuda.device_count() > 1 else args.devices.split(",")[0]
        source = pipe.transformer
        if args.weights == "fp8" and args.memory != "full":
            source = None  # streamed fp8 blocks: no bf16 copy to give the peer
        if source is not None:
            theirs = diffusers_copy(source).to(peer_device)
            torch.cuda.empty_cache()
    reference = forward_outputs(pipe, args.devices.split(",")[0]) if args.fidelity else None
    if args.compile_cache:
        Path(args.compile_cache).mkdir(parents=True, exist_ok=True)
    mode_started = time.perf_counter()
    pipe.set_mode(args.mode, args.compile_cache)
    mode_s = time.perf_counter() - mode_started
    facts = {**config, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "build_s": round(built_s, 1),
             "set_mode_s": round(mode_s, 1)}
    if reference is not None:
        converted = forward_outputs(pipe, args.devices.split(",")[0])
        facts["forward_rel_error"] = {"conditional": relative_error(converted[0], reference[0]),
                                      "unconditional": relative_error(converted[1], reference[1])}
    emit({"facts": facts})
    peer_cache: dict = {}
    saved = False
    for index, case in enumerate(args.cases.split(",")):
        size, text_tokens, preset = case.split(":")
        width, height = parse_size(size)
        prompt = prompt_with_tokens(pipe.tokenizer, int(text_tokens))
        warm_started = time.perf_counter()
        pipe._encoded = None
        # The first case's warm-up is a whole image: the first-image latency after loading, compile included.
        pipe(prompt, width=width, height=height, seed=0, preset=preset, **({} if index == 0 else {"num_inference_steps": 2}))
        synced(device_list)
        warm_s = time.perf_counter() - warm_started
        marks = []

        def on_step(step, total):
            synced(device_list)
            marks.append(time.perf_counter())

        pipe._encoded = None
        for device in device_list:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        synced(device_list)
        start = time.perf_counter()
        pipe(prompt, width=width, height=height, seed=0, preset=preset, callback=on_step if args.step_sync else None)
        synced(device_list)
        total = time.perf_counter() - start
        row = {**config, "step_sync": args.step_sync, "case": case, "first_image_s" if index == 0 else "warmup_2_steps_s": round(warm_s, 2),
               "e2e_s": round(total, 3),
               "peak_gb": [round(torch.cuda.max_memory_allocated(d) / 1e9, 2) for d in device_list if d.type == "cuda"],
               "driver_used_gb": [round((torch.cuda.mem_get_info(d)[1] - torch.cuda.mem_get_info(d)[0]) / 1e9, 2)
                                  for d in device_list if d.type == "cuda"]}
        if marks:
            steps = [b - a for a, b in zip(marks, marks[1:])]
            row["step_ms_median"] = round(1000 * statistics.median(steps), 1)
        if theirs is not None:
            grid_h, grid_w = token_grid(width, height)
            key = (int(text_tokens), grid_h, grid_w)
            if key not in peer_cache:
                peer_cache[key] = peer_step_ms(theirs, pipe.transformer.cfg, int(text_tokens), grid_h, grid_w,
                                               next(theirs.parameters()).device)
            row["diffusers_step_ms"] = round(peer_cache[key], 1)
            if "step_ms_median" in row:
                row["diffusers_over_ours"] = round(peer_cache[key] / row["step_ms_median"], 2)
        emit(row)
        if args.save_latents and preset == "quality" and not saved:
            saved = True
            pipe._encoded = None
            latents = pipe(prompt, width=width, height=height, seed=0, preset=preset, output_type="latent")
            Path(args.save_latents).mkdir(parents=True, exist_ok=True)
            torch.save(latents.float().cpu(), Path(args.save_latents) / f"{args.label}.pt")


def compare(a: str, b: str) -> None:
    x, y = torch.load(a), torch.load(b)
    print(json.dumps({"compare": [a, b], "rel_error": relative_error(x, y), "max_abs": float((x - y).abs().max()),
                      "ref_abs_mean": float(y.abs().mean())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="exact", choices=("eager", "exact", "fast"))
    parser.add_argument("--memory", default="full")
    parser.add_argument("--devices", default="cuda:0")
    parser.add_argument("--weights", default="bf16", choices=("bf16", "fp8"))
    parser.add_argument("--cases", default="1024x1024:300:quality")
    parser.add_argument("--peer", action="store_true", help="time diffusers' transformer in the same process")
    parser.add_argument("--fidelity", action="store_true", help="per-forward error against the bf16 DiTs")
    parser.add_argument("--save-latents", default=None, metavar="DIR")
    parser.add_argument("--compile-cache", default=None, metavar="DIR")
    parser.add_argument("--scratch", default="/tmp/e2e-scratch")
    parser.add_argument("--smoke", action="store_true", help="run the tiny test model on the CPU (checks the script)")
    parser.add_argument("--no-step-sync", dest="step_sync", action="store_false",
                        help="time the image without a device sync after each step (no step medians); as an "
                             "application calls the pipeline, where two GPUs' launches may overlap steps")
    parser.add_argument("--label", default="run")
    parser.add_argument("--out", default="e2e.jsonl")
    parser.add_argument("--compare", nargs=2, default=None, metavar=("A.pt", "B.pt"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    run(args)


if __name__ == "__main__":
    main()
