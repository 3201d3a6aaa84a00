"""CFG-parallel: the conditional DiT on one device, the unconditional DiT on another, both passes of a
step at the same time, one latent update (docs/speed.md, "CFG-parallel on two GPUs").

The two passes of a guided step use different weights, so they cannot share a GEMM; they only share
the latents. Each takes about half of the step, so two GPUs that run them side by side take a step in
the time of the longer pass. Two ways to do it:

- one process, two devices: `two_device_velocity` (chosen by `cfg_velocity` when `parse_devices` gave
  two devices; `place_for_cfg_parallel` puts the modules there). One Python thread keeps both GPUs busy
  because CUDA launches are asynchronous and nothing between the two launches waits for the device.
- two processes: `distributed_cfg_velocity`, rank 0 holding the conditional DiT and rank 1 the
  unconditional one, exchanging the image-token velocities every step; the command line below runs it:
  `torchrun --nproc-per-node 2 -m ideogram_app.speed.cfg_parallel --model M --prompt P --output out.png`.

Either way the guided velocity and the Euler update are the single-device ones (`sampling.py`), so the
latents are those of `dit_pair_velocity` up to the devices' own arithmetic.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ideogram_app.model.latents import TOKEN_CHANNELS
from ideogram_app.pipeline.conditioning import Conditioning, TokenLayout, token_layout
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.pipeline.sampling import Velocity, denoise, guided_velocity
from ideogram_app.pipeline.sizes import token_grid
from ideogram_app.pipeline.velocity import dit_pair_velocity, lora_scales, run_dit

MAX_DEVICES = 2  # one per DiT: conditional, unconditional
PassScales = tuple[Mapping[str, float], Mapping[str, float]]


class DeviceError(ValueError):
    """A device list that cannot be used; the message names the list and the offending entry."""


# ----- devices and placement ----------------------------------------------------------------------
def parse_devices(spec: str | Sequence[str | torch.device] | None = "auto") -> tuple[torch.device, ...]:
    """The devices of a run: one (the ordinary single-device pipeline) or two (CFG-parallel: the
    conditional DiT on the first, the unconditional DiT on the second).

    `spec` is a comma-separated string ("cuda:0,cuda:1"), a sequence of names or devices, or "auto"/None:
    two GPUs when at least two are visible, else `cuda:0`, else `cpu` — the fallback that makes the
    same command work on a one-GPU machine. An explicit list is taken literally and must exist: "cuda"
    means cuda:0; two devices must be two different CUDA GPUs. Raises DeviceError otherwise.
    """
    count = torch.cuda.device_count()
    if spec is None or (isinstance(spec, str) and spec.strip() == "auto"):
        if count >= 2:
            return torch.device("cuda", 0), torch.device("cuda", 1)
        return (torch.device("cuda", 0),) if count == 1 else (torch.device("cpu"),)
    text = spec if isinstance(spec, str) else ",".join(str(d) for d in spec)
    names = [part.strip() for part in text.split(",")]
    if not any(names):
        raise DeviceError("devices: none given; name one device (cuda:0) or two (cuda:0,cuda:1), or 'auto'")
    devices = []
    for name in names:
        try:
            device = torch.device(name) if name else None
        except (RuntimeError, TypeError):
            device = None
        if device is None:
            raise DeviceError(f"devices {text!r}: {name!r} is not a device name (cpu, cuda, cuda:N)")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", 0)
        devices.append(device)
    if len(devices) > MAX_DEVICES:
        raise DeviceError(f"devices {text!r}: {len(devices)} devices named; CFG-parallel uses at most 2 "
                          "(the conditional DiT on the first, the unconditional DiT on the second)")
    if len(devices) == 2:
        if devices[0] == devices[1]:
            raise DeviceError(f"devices {text!r}: {devices[0]} is named twice; the two DiTs need two different GPUs")
        for device in devices:
            if device.type != "cuda":
                raise DeviceError(f"devices {text!r}: {device} is not a CUDA GPU; CFG-parallel runs on two CUDA GPUs")
    for device in devices:
        if device.type == "cuda" and device.index >= count:
            present = ", ".join(f"cuda:{i}" for i in range(count))
            raise DeviceError(
                f"devices {text!r}: {device} does not exist; "
                + (f"this machine has {count} CUDA GPU{'s' if count > 1 else ''} ({present})" if count else
                   "this machine has no CUDA GPU (torch.cuda.device_count() is 0)")
            )
    return tuple(devices)


def component_devices(devices: Sequence[torch.device]) -> dict[str, torch.device]:
    """Where each component of a CFG-parallel pipeline lives: everything but the unconditional DiT on
    the first device (text encoder and VAE run once per image, next to the DiT that uses their output)."""
    if len(devices) != 2:
        raise DeviceError(f"CFG-parallel needs exactly two devices, got {len(devices)}: {', '.join(map(str, devices))}")
    first, second = (torch.device(d) for d in devices)
    return {"transformer": first, "text_encoder": first, "vae": first, "unconditional_transformer": second}


def place_for_cfg_parallel(
    *,
    transformer: nn.Module,
    unconditional: nn.Module | None,
    text_encoder: nn.Module,
    vae: nn.Module,
    devices: Sequence[torch.device],
) -> MemoryPlan:
    """Move the pipeline's modules to their devices (`component_devices`) and return the plan of the
    first device, under which the text encoder, the VAE and the conditioning run as usual.

    Everything stays resident: offloading would put a host-to-device copy of a whole DiT into every
    step and undo the gain. A pipeline without an unconditional DiT (one DiT serving both passes) has
    nothing to put on the second device and is refused.
    """
    if unconditional is None or unconditional is transformer:
        raise ValueError("CFG-parallel needs an unconditional_transformer on the second device; this pipeline runs "
                         "both passes on one DiT (no unconditional_transformer/ or unconditional='lora'): use one device")
    where = component_devices(devices)
    for role, module in (("transformer", transformer), ("text_encoder", text_encoder), ("vae", vae),
                         ("unconditional_transformer", unconditional)):
        module.to(where[role])
    return MemoryPlan.on(where["transformer"])


def layout_on(layout: TokenLayout, device: torch.device) -> TokenLayout:
    """A token layout with all its tensors (ids, RoPE tables, mask) on `device`."""
    positions = layout.positions
    moved = dataclasses.replace(
        positions, cos=positions.cos.to(device), sin=positions.sin.to(device),
        mask=None if positions.mask is None else positions.mask.to(device),
    )
    return TokenLayout(layout.position_ids.to(device), layout.segment_ids.to(device), layout.indicator.to(device), moved)


# ----- one process, two devices -------------------------------------------------------------------
def two_device_velocity(
    transformer: nn.Module,
    unconditional: nn.Module,
    conditioning: Conditioning,
    cond_device: str | torch.device,
    uncond_device: str | torch.device,
    pass_scales: PassScales | None = None,
) -> Velocity:
    """The guided velocity with the conditional DiT on `cond_device` and the unconditional DiT on
    `uncond_device`, both passes of a step in flight at once. `conditioning` is the one
    `prepare_conditioning` made on `cond_device`; its unconditional layout is copied to `uncond_device`
    once here. `z` comes in on `cond_device` and the velocity goes back there.

    Per step, in launch order: z is copied to the second device (queued on the first device's stream,
    ahead of its forward), the conditional forward is queued on the first device, the unconditional one
    on the second, and the second velocity is copied back and combined by `guided_velocity`. None of
    this waits for a device: the DiT forward has no host synchronisation once `prepare_conditioning` has
    built the RoPE tables and decided on the mask, and device-to-device copies are ordered by stream
    events, not by the host. The conditional pass (text + image rows) is the longer one, so it is queued
    first. With g = 1 the unconditional pass is skipped. `pass_scales` = (LoRA scales during the
    conditional pass, during the unconditional pass), as in `dit_pair_velocity`; scales are read at
    launch, so switching them around each launch is exact.
    """
    cond_device, uncond_device = torch.device(cond_device), torch.device(uncond_device)
    if unconditional is transformer and cond_device != uncond_device:
        raise ValueError("one DiT serving both passes cannot run on two devices; load an unconditional_transformer")
    cond_scales, uncond_scales = pass_scales or (None, None)
    n_text = conditioning.num_text_tokens
    batch, length = conditioning.conditional.indicator.shape
    uncond_layout = layout_on(conditioning.unconditional, uncond_device)
    cond_input = torch.zeros(batch, length, TOKEN_CHANNELS, device=cond_device)

    def velocity(z: torch.Tensor, t: float, g: float) -> torch.Tensor:
        guided = g != 1.0
        if guided:
            z_uncond = z.to(uncond_device, non_blocking=True)
        cond_input[:, n_text:] = z
        t_cond = torch.full((batch,), t, dtype=torch.float32, device=cond_device)
        with lora_scales(transformer, cond_scales):
            v_cond = run_dit(transformer, cond_input, t_cond, conditioning.conditional, conditioning.text_hidden)[:, n_text:]
        if not guided:
            return guided_velocity(v_cond, None, g)
        t_uncond = torch.full((batch,), t, dtype=torch.float32, device=uncond_device)
        with lora_scales(unconditional, uncond_scales):
            v_uncond = run_dit(unconditional, z_uncond, t_uncond, uncond_layout)
        return guided_velocity(v_cond, v_uncond.to(cond_device, non_blocking=True), g)

    return velocity


def cfg_velocity(
    transformer: nn.Module,
    unconditional: nn.Module,
    conditioning: Conditioning,
    memory: MemoryPlan,
    devices: Sequence[torch.device],
    pass_scales: PassScales | None = None,
) -> Velocity:
    """The pipeline's one branch on the device count: two devices (from `parse_devices`) give
    `two_device_velocity`, one gives the ordinary `dit_pair_velocity` under `memory`."""
    if len(devices) == 2:
        return two_device_velocity(transformer, unconditional, conditioning, devices[0], devices[1], pass_scales)
    return dit_pair_velocity(transformer, unconditional, conditioning, memory, pass_scales)


# ----- two processes ------------------------------------------------------------------------------
def distributed_cfg_velocity(
    dit: nn.Module,
    layout: TokenLayout,
    device: str | torch.device,
    text_hidden: torch.Tensor | None = None,
    group: dist.ProcessGroup | None = None,
) -> Velocity:
    """This rank's share of the guided velocity in a process group of two: rank 0 runs the
    conditional DiT (`layout` = the `[text][image]` layout, `text_hidden` = the projected text), rank 1
    the unconditional DiT (its image-only layout, no text). Every step each rank runs its pass and the
    two image-token velocities are all-gathered, so both ranks compute the same guided velocity from
    the same bits and keep identical latents (which must start identical: broadcast them). With g = 1
    rank 1 skips its pass and receives rank 0's velocity instead (a broadcast). `device` is where this
    rank computes (its GPU with NCCL, the CPU with gloo)."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    if size != 2:
        raise ValueError(f"CFG-parallel needs a process group of 2 ranks (conditional, unconditional), got {size}")
    conditional = rank == 0
    if conditional != (text_hidden is not None):
        raise ValueError(f"rank {rank} runs the {'conditional' if conditional else 'unconditional'} pass: "
                         f"{'pass' if conditional else 'do not pass'} text_hidden")
    device = torch.device(device)
    n_text = 0 if text_hidden is None else text_hidden.shape[1]
    batch, length = layout.indicator.shape
    x = torch.zeros(batch, length, TOKEN_CHANNELS, device=device)
    first = 0 if group is None else dist.get_global_rank(group, 0)

    def velocity(z: torch.Tensor, t: float, g: float) -> torch.Tensor:
        if g == 1.0:
            if conditional:
                v = own_pass(z, t)
            else:
                v = torch.empty_like(z)
            dist.broadcast(v, src=first, group=group)
            return guided_velocity(v, None, g)
        mine = own_pass(z, t)
        both = [torch.empty_like(mine), torch.empty_like(mine)]
        dist.all_gather(both, mine, group=group)
        return guided_velocity(both[0], both[1], g)

    def own_pass(z: torch.Tensor, t: float) -> torch.Tensor:
        x[:, n_text:] = z
        t_batch = torch.full((batch,), t, dtype=torch.float32, device=device)
        return run_dit(dit, x, t_batch, layout, text_hidden)[:, n_text:].contiguous()

    return velocity


# ----- command line (two processes) ---------------------------------------------------------------
# generate's flags that this runner does not implement, refused rather than ignored.
NOT_WITH_TWO_PROCESSES = {
    "edit_region": "region edits need the pipeline's own run (its latent hook); use python -m ideogram_app.generate",
    "devices": "each rank takes its own device (--device cuda: cuda:LOCAL_RANK)",
}


def build_parser() -> argparse.ArgumentParser:
    """`python -m ideogram_app.generate`'s flags (same names, defaults and checks), with `--prompt` /
    `--output` as the names used here, `--device cuda|cpu` for the kind of device each rank takes, and
    `--memory full` only: each rank keeps what it runs resident on its own device."""
    from ideogram_app.generate import build_parser as generate_parser

    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node 2 -m ideogram_app.speed.cfg_parallel", parents=[generate_parser()],
        conflict_handler="resolve",
        description="Generate with the conditional DiT in rank 0 and the unconditional DiT in rank 1 (CFG-parallel).",
    )
    p.add_argument("--prompt", "--caption", dest="caption", required=True, help="caption/prompt file (.json/.txt) or the text")
    p.add_argument("--output", "--out", dest="out", required=True, help="output PNG (OUT-i.png with --num-images > 1)")
    p.add_argument("--device", default=None, choices=("cuda", "cpu"),
                   help="cuda: rank r on cuda:LOCAL_RANK with NCCL (the default when CUDA is present); cpu: gloo")
    p.add_argument("--memory", default="full", choices=("full",), help="each rank keeps its components on its device")
    return p


def rank_device(kind: str | None) -> torch.device:
    """This process's device: cuda:LOCAL_RANK (one GPU per rank, as NCCL requires) or the CPU."""
    from ideogram_app.generate import UsageError

    kind = kind or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UsageError(f"--device cuda: rank {local_rank} needs cuda:{local_rank}, but this machine has {count} CUDA "
                         f"GPU{'s' if count != 1 else ''}; CFG-parallel over processes needs one GPU per rank")
    return torch.device("cuda", local_rank)


def _load_rank(args: argparse.Namespace, device: torch.device, rank: int):
    """Rank 0: a pipeline with the conditional DiT, text encoder and VAE (no unconditional DiT);
    rank 1: the unconditional DiT alone. Nobody loads what it will not run."""
    from ideogram_app.loading.dit import load_transformer
    from ideogram_app.pipeline.estimate import choose_fp8, component_weight_bytes
    from ideogram_app.pipeline.model_config import components_from_model
    from ideogram_app.speed import apply_speed_mode, check_speed_mode, default_speed_mode

    paths = components_from_model(args.model)
    if paths.unconditional_transformer is None:
        raise ValueError(f"{args.model} has no unconditional_transformer/, which rank 1 runs; use ideogram_app.generate")
    dtype = getattr(torch, args.dtype)
    mode = check_speed_mode(args.mode or default_speed_mode(device))
    if rank == 1:  # fp8 and speed mode decided as `Ideogram4Pipeline.from_components` decides them
        fp8 = args.fp8
        if fp8 == "auto":
            fp8 = choose_fp8(MemoryPlan.on(device), component_weight_bytes(
                paths.unconditional_transformer, "unconditional_transformer", "dequantize", dtype), mode)
        dit = load_transformer(paths.unconditional_transformer, device=device, dtype=dtype, fp8=fp8,
                               subfolder="unconditional_transformer")
        return apply_speed_mode(dit, mode, cache_dir=args.compile_cache)
    from ideogram_app.pipeline.pipeline import Ideogram4Pipeline  # rank 0 only: it pulls in the text stack

    name = args.model
    paths = dataclasses.replace(paths, unconditional_transformer=None)
    if args.transformer is not None:
        paths = dataclasses.replace(paths, transformer=args.transformer)
        name = f"{args.model} (transformer: {args.transformer})"
    pipe = Ideogram4Pipeline.from_components(paths, torch_dtype=dtype, device=device, memory="full", fp8=args.fp8,
                                             model_name=name, warn_single_dit=False, mode=mode,
                                             compile_cache=args.compile_cache)
    for path, scale in args.lora:
        try:
            print(pipe.load_lora(path, scale=scale).summary(), file=sys.stderr)
        except ValueError as err:
            raise ValueError(f"--lora {path}: {err}") from None
    return pipe


def _agree(failure: tuple[int, str] | None) -> tuple[int, str] | None:
    """Every rank's (exit status, message) of its setup, so all stop together: a rank that failed
    alone would leave the other waiting in the first collective of the loop."""
    failures: list = [None] * dist.get_world_size()
    dist.all_gather_object(failures, failure)
    return next((f for f in failures if f is not None), None)


def main(argv: list[str] | None = None) -> int:
    from ideogram_app.generate import UsageError, check_arguments

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if "RANK" not in os.environ or os.environ.get("WORLD_SIZE") != "2":
        print("error: start 2 processes: torchrun --nproc-per-node 2 -m ideogram_app.speed.cfg_parallel ...", file=sys.stderr)
        return 2
    try:
        for dest, why in NOT_WITH_TWO_PROCESSES.items():
            if getattr(args, dest, None) is not None:
                raise UsageError(f"--{dest.replace('_', '-')} is not available with two processes: {why}")
        prompt, settings = check_arguments(args)
        device = rank_device(args.device)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    try:
        rank = dist.get_rank()
        failure, loaded, request = None, None, None
        try:
            loaded = _load_rank(args, device, rank)
        except Exception as err:  # whatever it is, it must reach the other rank (see _agree)
            failure = (1, f"cannot load {args.model}: {err}")
        if rank == 0 and failure is None:
            try:
                request = loaded.prepare(prompt, settings)  # the token count needs the tokenizer
            except ValueError as err:
                failure = (2, str(err))
        failure = _agree(failure)
        if failure is not None:
            if rank == 0:
                print(f"error: {failure[1]}", file=sys.stderr)
            return failure[0]
        with torch.inference_mode():
            _generate(args, loaded, request, settings, device, rank)
        # Rank 1 is done after the last step, rank 0 after saving: tearing the group down while the
        # other rank still holds it can abort gloo's threads ("terminate called"), so meet first.
        dist.barrier()
        return 0
    finally:
        dist.destroy_process_group()


def _generate(args: argparse.Namespace, loaded, request, settings, device: torch.device, rank: int) -> None:
    """Rank 0 encodes the prompt, draws the starting latents and broadcasts them; both ranks denoise
    in lockstep; rank 0 decodes and saves. The stages are the pipeline's own (`Ideogram4Pipeline.start` and
    `finish`, the two halves of `run` around the loop)."""
    from tqdm import tqdm

    from ideogram_app.generate import output_paths
    from ideogram_app.pipeline.metadata import save_png

    grid_h, grid_w = token_grid(settings.width, settings.height)
    times, guidance = settings.times, settings.sampler.guidance
    z = torch.empty(settings.num_images, grid_h * grid_w, TOKEN_CHANNELS, device=device)
    if rank == 1:
        layout = token_layout(loaded, 0, grid_h, grid_w, settings.num_images, device)
        dist.broadcast(z, src=0)
        denoise(distributed_cfg_velocity(loaded, layout, device), z, times, guidance)
        return
    pipe = loaded
    started = pipe.start(request)  # the pipeline's own stages: text features, conditioning, start latents
    z.copy_(started.z)
    dist.broadcast(z, src=0)
    conditioning = started.conditioning
    velocity = distributed_cfg_velocity(pipe.transformer, conditioning.conditional, device, conditioning.text_hidden)
    with tqdm(total=len(guidance), desc="denoising", unit="step") as bar:
        z = denoise(velocity, z, times, guidance, lambda step, total: bar.update(step - bar.n))
    images = pipe.finish(request, started, z)
    for i, (image, path) in enumerate(zip(images if isinstance(images, list) else [images],
                                          output_paths(Path(args.out), settings.num_images))):
        save_png(image, path)
        print(f"saved {path} (seed {request.settings.seeds[i]})")

if __name__ == "__main__":
    sys.exit(main())
