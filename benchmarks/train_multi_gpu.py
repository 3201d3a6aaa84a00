"""Training on the GPUs of one machine: the LoRA data-parallel speed-up and the FSDP full fine-tune.

Released DiT shapes with random bf16 weights drawn on each GPU (no checkpoint files), one 1024² sample
per process and step (4096 image tokens, 512 text tokens), per-block gradient checkpointing. The run is
the trainer's own: `make_accelerator` (the launcher's Accelerate config decides DDP or FSDP),
`prepare_model` and `optimizer_step` from `ideogram_app/train/loop.py`.

- `--phase lora`: rank 32 on DiffSynth's targets, projected text (the LoRA cache), fused fp32 AdamW.
  Run once with one process and once with two; samples/s = processes / (s/step).
- `--phase fsdp`: every DiT weight trains (`--trainable_models dit`), raw text features (the projection
  trains too), bf16 AdamW with fp32 moments, FSDP2 full shard from the shipped
  `ideogram_app/train/accelerate_configs/fsdp_full.yaml`. s/step and peak memory of every GPU.

Each phase appends one JSON line to --out (main process only); `--summary FILE` prints the table and
the two-process speed-up. On the 2-GPU machine, from the repository root (about 3 minutes):

    python3 benchmarks/train_multi_gpu.py --phase lora --out multi.jsonl
    accelerate launch --config_file ideogram_app/train/accelerate_configs/ddp_lora.yaml \\
        benchmarks/train_multi_gpu.py --phase lora --out multi.jsonl
    accelerate launch --config_file ideogram_app/train/accelerate_configs/fsdp_full.yaml \\
        benchmarks/train_multi_gpu.py --phase fsdp --out multi.jsonl
    python3 benchmarks/train_multi_gpu.py --summary multi.jsonl

Without --smoke the script needs CUDA and the distributed mode the phase asks for, and exits 1
otherwise (it never falls back to the CPU). `--smoke` checks the script on a narrow 2-block model,
also on the CPU with gloo processes (`torchrun --nproc_per_node 2 benchmarks/train_multi_gpu.py
--smoke --phase fsdp --out F`); there Accelerate offers no FSDP, so the FSDP phase switches
Accelerate's state to the shipped config's plugin by hand and Accelerate's own FSDP2 wrapping runs.
Its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import SMOKE_CONFIG, bench_run, device_info, make_batch, random_dit, timed_steps  # noqa: E402 (sets the allocator up first)

import torch  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from ideogram_app.model.ideogram4_dit import Ideogram4Config  # noqa: E402
from ideogram_app.train import adapters  # noqa: E402
from ideogram_app.train.config import DIFFSYNTH_LORA_TARGETS, TrainConfig  # noqa: E402
from ideogram_app.train.memory import release_text_projection  # noqa: E402

FSDP_CONFIG = ROOT / "ideogram_app" / "train" / "accelerate_configs" / "fsdp_full.yaml"
SPEEDUP_TARGET = 1.8


class SetupError(RuntimeError):
    """The launch does not give what the phase measures (no GPU, wrong distributed mode)."""


def smoke_fsdp_state(accelerator) -> None:
    """--smoke on the CPU only: Accelerate selects FSDP for GPUs alone, so its state is switched to the
    plugin that `accelerate launch --config_file fsdp_full.yaml` would build (the YAML's fsdp_config
    keys become the FSDP_* variables the launcher exports); the wrapping is then Accelerate's own."""
    import yaml
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    names = {"fsdp_transformer_layer_cls_to_wrap": "FSDP_TRANSFORMER_CLS_TO_WRAP"}
    for key, value in yaml.safe_load(FSDP_CONFIG.read_text())["fsdp_config"].items():
        os.environ[names.get(key, key.upper())] = str(value).lower() if isinstance(value, bool) else str(value)
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState's own init does


def check_setup(accelerator, phase: str, smoke: bool) -> None:
    world = accelerator.num_processes
    if not smoke:
        if accelerator.device.type != "cuda":
            raise SetupError(f"Accelerate runs this process on {accelerator.device}; the benchmark measures GPUs "
                             "(is CUDA visible to PyTorch?)")
        if world > torch.cuda.device_count():
            raise SetupError(f"{world} processes but {torch.cuda.device_count()} GPU(s) visible")
    kind = accelerator.distributed_type
    if phase == "fsdp":
        if world < 2:
            raise SetupError("--phase fsdp needs at least 2 processes: launch it with accelerate launch --config_file "
                             f"{FSDP_CONFIG.relative_to(ROOT)}")
        if kind != DistributedType.FSDP or not accelerator.is_fsdp2:
            raise SetupError(f"--phase fsdp runs under {kind.value}, not FSDP2: launch it with accelerate launch "
                             f"--config_file {FSDP_CONFIG.relative_to(ROOT)}")
    elif world > 1 and kind not in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        raise SetupError(f"--phase lora with {world} processes runs under {kind.value}, not data parallel: launch it "
                         "with ideogram_app/train/accelerate_configs/ddp_lora.yaml")


def build(phase: str, cfg: Ideogram4Config, accelerator, rank: int, steps: int):
    """The trainer's run for one phase around a random DiT on this process's device."""
    dit = random_dit(cfg, accelerator.device)
    if phase == "lora":
        release_text_projection(dit)
        names = adapters.select_targets(dit, DIFFSYNTH_LORA_TARGETS)
        params = adapters.attach(dit, adapters.initial_modules(dit, names, rank, float(rank), seed=0))
        config = TrainConfig(lora_base_model="dit", lora_rank=rank, use_gradient_checkpointing=True, learning_rate=1e-4)
    else:
        dit.requires_grad_(True)
        params = list(dit.parameters())
        config = TrainConfig(trainable_models="dit", use_gradient_checkpointing=True, learning_rate=1e-5)
    trained = sum(p.numel() for p in params)
    run = bench_run(config, accelerator, dit, params, steps)
    del params  # FSDP replaced them with shards: the full tensors must not outlive the wrapping
    return run, trained


def measure(args, cfg: Ideogram4Config, size: int, text_tokens: int, rank: int) -> dict | None:
    from ideogram_app.train.loop import make_accelerator

    accelerator = make_accelerator(TrainConfig())
    if args.smoke and args.phase == "fsdp" and accelerator.device.type == "cpu":
        smoke_fsdp_state(accelerator)
    check_setup(accelerator, args.phase, args.smoke)
    world = accelerator.num_processes
    warmup, steps = args.warmup, args.steps or (8 if args.phase == "lora" else 5)
    run, trained = build(args.phase, cfg, accelerator, rank, warmup + steps)
    if args.phase == "fsdp" and not all(isinstance(p, DTensor) for p in run.params):
        raise SetupError("Accelerate's prepare left the DiT's parameters unsharded")
    batch = make_batch(cfg, size, text_tokens, accelerator.device, projected=args.phase == "lora")
    timing = timed_steps(run, batch, warmup, steps)
    device = accelerator.device
    own = [timing["s_per_step"], timing.get("peak_allocated_gib", -1.0), timing.get("peak_reserved_gib", -1.0)]
    every = [[None if value < 0 else value for value in row]  # no memory peaks on the CPU
             for row in accelerator.gather(torch.tensor([own], dtype=torch.float64, device=device)).cpu().tolist()]
    result = {
        "phase": args.phase, "processes": world, "distributed": accelerator.distributed_type.value,
        "s_per_step": max(row[0] for row in every),  # a step ends when the slowest process ends it
        "samples_per_s": round(world / max(row[0] for row in every), 4),
        "s_per_step_per_process": [row[0] for row in every],
        "peak_allocated_gib_per_process": [row[1] for row in every],
        "peak_reserved_gib_per_process": [row[2] for row in every],
        "trained_parameters": trained, "batch_per_process": 1, "size": size, "text_tokens": text_tokens,
        "checkpointing": True, "steps_timed": steps, "loss_first": timing["loss_first"], "loss_last": timing["loss_last"],
        **({"rank": rank} if args.phase == "lora" else {}), **device_info(device), "smoke": args.smoke,
    }
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    del run, batch
    gc.collect()
    return result if accelerator.is_main_process else None


def summary(path: Path) -> int:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        peaks = ", ".join(f"{a}/{r}" for a, r in zip(row["peak_allocated_gib_per_process"], row["peak_reserved_gib_per_process"]))
        print(f"{row['phase']:5} x{row['processes']} ({row['distributed']}): {row['s_per_step']:.3f} s/step, "
              f"{row['samples_per_s']:.3f} samples/s, peak GiB allocated/reserved per GPU: {peaks}")
    lora = {row["processes"]: row for row in rows if row["phase"] == "lora"}
    if 1 in lora and 2 in lora:
        ratio = lora[2]["samples_per_s"] / lora[1]["samples_per_s"]
        verdict = "met" if ratio >= SPEEDUP_TARGET else "NOT met"
        print(f"LoRA DDP speed-up, 2 processes over 1: {ratio:.2f}x (target >= {SPEEDUP_TARGET}x: {verdict})")
    else:
        print("LoRA DDP speed-up: needs a 1-process and a 2-process lora row")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("lora", "fsdp"), help="what to measure (see the module docstring)")
    parser.add_argument("--out", help="JSON-lines file the main process appends its row to")
    parser.add_argument("--summary", type=Path, help="print the rows of this file and the DDP speed-up, then exit")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 8 for lora, 5 for fsdp)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="a narrow 2-block model, to check the script (CPU allowed)")
    args = parser.parse_args(argv)
    if args.summary:
        return summary(args.summary)
    if not args.phase or not args.out:
        parser.error("--phase and --out are needed (or --summary FILE)")
    if args.smoke and not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "1"  # gloo processes on the CPU
    elif not torch.cuda.is_available():
        print("error: no CUDA device is visible to PyTorch; this benchmark does not fall back to the CPU", file=sys.stderr)
        return 1
    cfg = Ideogram4Config()
    size, text_tokens, rank = args.size, args.text_tokens, args.rank
    if args.smoke:
        cfg = replace(cfg, **SMOKE_CONFIG)
        size, text_tokens, rank = 128, 16, 4
    try:
        result = measure(args, cfg, size, text_tokens, rank)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
