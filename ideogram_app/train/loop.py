"""The training run, top-down (docs/training.md, "How a run goes"):

1. `check_inputs`: settings, model files, every sample and validation prompt — all before anything
   is written, so bad input is named with nothing half-made in the output folder.
2. `prepare_run`: the conditional DiT (fp8-kept on request), the preset LoRA, the trained LoRA or the
   full set of trainable weights, the caches (text encoder and VAE loaded only for missing entries
   and released before the first step), memory passes, optimiser, schedule, Accelerate wrapping.
3. `train`: a plain loop of optimiser steps; step k of an epoch takes the batches k·W·A … k·W·A+W·A−1
   of that epoch's order (W processes, A accumulation steps), so the data a step sees does not
   depend on how it is split. Checkpoints, validation samples, metrics and a clean stop on
   SIGTERM/SIGINT happen between steps.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import resource
import signal
import sys
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from torch import nn
from torch.distributed.tensor import DTensor

from ideogram_app.loading.checkpoint_layout import fused_key, stored_shape_to_fused
from ideogram_app.loading.dit import load_transformer, read_dit_config
from ideogram_app.loading.safetensors_io import read_headers, resolve_safetensors
from ideogram_app.loading.text_encoder import load_text_encoder
from ideogram_app.loading.vae import load_vae
from ideogram_app.model.fp8 import Fp8Linear
from ideogram_app.model.ideogram4_dit import Ideogram4DiT
from ideogram_app.model.nf4 import require_nf4_support
from ideogram_app.model.prompt_tokenizer import PromptTokenizer
from ideogram_app.pipeline.hub import ModelSourceError
from ideogram_app.pipeline.model_config import ComponentPaths, ModelConfig, components_from_configs, components_from_model
from ideogram_app.pipeline.placement import MemoryPlan
from ideogram_app.pipeline.sizes import token_grid
from ideogram_app.train import adapters
from ideogram_app.train.cache import (
    FeatureCache, TextRecipe, component_fingerprint, fill_latents, fill_text, folder_fingerprint, latent_key,
    missing_share, modules_fingerprint, projector, release_memory,
)
from ideogram_app.train.checkpoints import load_checkpoint, remove_partial, resolve_resume, save_checkpoint, step_folder, write_outputs
from ideogram_app.train.config import TrainConfig, as_dict, cache_root, fp8_role, is_lora, lora_alpha, split_list
from ideogram_app.train.data import Dataset, DataError, load_dataset
from ideogram_app.train.lean_lora import lean_lora
from ideogram_app.train.memory import checkpoint_blocks, release_text_projection, store_fp8
from ideogram_app.train.objective import collate, draw, flow_matching_loss
from ideogram_app.train.optim import build_optimizer, build_scheduler
from ideogram_app.train.records import RunRecord
from ideogram_app.train.validation import ValidationPrompt, Validator, read_validation_prompts

class InputError(ValueError):
    """Input that cannot train, found before anything was written."""


# ----- 1. inputs -----------------------------------------------------------------------------------

def _source() -> str | None:
    """DiffSynth's own switch for --model_id_with_origin_paths (else our default source)."""
    value = os.environ.get("DIFFSYNTH_DOWNLOAD_SOURCE", "").lower()
    return {"huggingface": "huggingface", "modelscope": "modelscope"}.get(value)


def _tokenizer_config(value: str) -> ModelConfig:
    if Path(value).exists():
        return ModelConfig(path=value)
    model_id, _, pattern = value.partition(":")
    return ModelConfig(model_id=model_id, origin_file_pattern=pattern or "tokenizer/", source=_source())


def resolve_components(c: TrainConfig) -> ComponentPaths:
    tokenizer = _tokenizer_config(c.tokenizer_path) if c.tokenizer_path else None
    if c.model:
        paths = components_from_model(c.model)
        if tokenizer is not None:
            paths.tokenizer = tokenizer.resolve()
        return paths
    configs = []
    for entry in json.loads(c.model_paths) if c.model_paths else []:
        path = entry if isinstance(entry, str) else str(Path(entry[0]).parent)
        configs.append(ModelConfig(path=path))
    for entry in split_list(c.model_id_with_origin_paths):
        model_id, _, pattern = entry.partition(":")
        configs.append(ModelConfig(model_id=model_id, origin_file_pattern=pattern, source=_source()))
    return components_from_configs(configs, tokenizer)


def dit_is_nf4(path: Path) -> bool:
    """Whether the transformer checkpoint holds bitsandbytes NF4 weights (read from the headers only)."""
    return any(key.endswith(".quant_state.bitsandbytes__nf4") for key in read_headers(resolve_safetensors(path, "transformer")))


def check_nf4_base(c: TrainConfig, path: Path) -> None:
    """An NF4 checkpoint is a frozen LoRA base on a CUDA device with bitsandbytes; anything else is named
    before a file is written (docs/training.md, "LoRA on an NF4 base")."""
    if not dit_is_nf4(path):
        return
    where = f"the transformer {path}"
    if not is_lora(c):
        raise InputError(f"{where} holds NF4 weights, which cannot be trained; a full fine-tune (--trainable_models dit) "
                         "needs the bf16 checkpoint (an NF4 base takes a LoRA: --lora_base_model dit)")
    if "dit" in {fp8_role(m) for m in split_list(c.fp8_models)}:
        raise InputError(f"--fp8_models dit: {where} is already quantised (NF4); leave dit out of --fp8_models")
    try:
        require_nf4_support(torch.device("cuda" if torch.cuda.is_available() else "cpu"), where)
    except RuntimeError as err:
        raise InputError(str(err)) from None


def dit_shape_model(path: Path) -> nn.Module:
    """The DiT's module tree on the meta device (no weights read), to check LoRA targets early."""
    files = resolve_safetensors(path, "transformer")
    shapes = {}
    for key, info in read_headers(files).items():
        fused, part = fused_key(key)
        shapes[fused] = stored_shape_to_fused(info.shape, part)
    with torch.device("meta"):
        return Ideogram4DiT(read_dit_config(files[0].parent, shapes, str(files[0])))


@dataclass
class Inputs:
    paths: ComponentPaths
    dataset: Dataset
    prompts: list[ValidationPrompt]
    steps_per_epoch: int
    total_steps: int
    targets: list[str]


def batches_per_epoch(dataset: Dataset, repeat: int, batch_size: int) -> int:
    sizes: dict[tuple[int, int], int] = {}
    for sample in dataset.samples:
        sizes[sample.size] = sizes.get(sample.size, 0) + repeat
    return sum(math.ceil(n / batch_size) for n in sizes.values())


def check_inputs(c: TrainConfig, world: int) -> Inputs:
    """Everything that can be checked without loading weights; raises InputError (one message)."""
    try:
        paths = resolve_components(c)
        check_nf4_base(c, paths.transformer)
        targets = adapters.select_targets(dit_shape_model(paths.transformer), c.lora_target_modules) if is_lora(c) else []
        tokenizer = PromptTokenizer(paths.tokenizer)
        dataset = load_dataset(c, tokenizer.count)
        prompts = []
        if c.validation_prompts:
            prompts = read_validation_prompts(c.validation_prompts, c.validation_preset, c.width, c.height, c.seed)
            for prompt in prompts:
                tokenizer.token_ids(prompt.caption)  # raises PromptTooLongError
    except (DataError, ModelSourceError, FileNotFoundError, ValueError) as err:
        raise InputError(str(err)) from None
    per_step = world * c.gradient_accumulation_steps
    batches = batches_per_epoch(dataset, c.dataset_repeat, c.batch_size)
    steps_per_epoch = batches // per_step
    if steps_per_epoch == 0:
        raise InputError(f"the dataset gives {batches} batch(es) per epoch, but one optimiser step takes {per_step} "
                         f"({world} process(es) x --gradient_accumulation_steps {c.gradient_accumulation_steps}); "
                         "raise --dataset_repeat or lower --batch_size / --gradient_accumulation_steps")
    output = Path(c.output_path)
    if c.resume is None and (output / "run.json").exists():
        raise InputError(f"--output_path {output} already holds a run; pass --resume latest to continue it, or choose "
                         "another --output_path")
    if c.resume is not None:
        try:
            resolve_resume(output, c.resume)
        except ValueError as err:
            raise InputError(str(err)) from None
    total = c.max_steps or c.num_epochs * steps_per_epoch
    return Inputs(paths, dataset, prompts, steps_per_epoch, total, targets)


# ----- 2. the run ----------------------------------------------------------------------------------

@dataclass
class Run:
    config: TrainConfig
    settings: dict[str, Any]
    accelerator: Any
    output: Path
    record: RunRecord
    inputs: Inputs
    dit: nn.Module = None  # the plain module (LoRA attached)
    model: nn.Module = None  # what runs forward: the DiT or its DDP/FSDP wrapper
    params: list[nn.Parameter] = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    cache: FeatureCache = None
    text_recipe: TextRecipe = None
    latent_keys: list[str] = field(default_factory=list)
    validator: Validator | None = None
    model_name: str = ""

    @property
    def lora(self) -> bool:
        return is_lora(self.config)

    @property
    def alpha(self) -> float:
        return lora_alpha(self.config)

    @property
    def keep(self) -> int:
        return self.config.keep_checkpoints


def say(run_or_acc, message: str) -> None:
    acc = getattr(run_or_acc, "accelerator", run_or_acc)
    if acc.is_main_process:
        print(message, file=sys.stderr, flush=True)


def _fsdp(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def load_dit(run: Run) -> nn.Module:
    c, acc = run.config, run.accelerator
    dtype = getattr(torch, c.dtype)
    fp8_dit = "dit" in {fp8_role(m) for m in split_list(c.fp8_models)}
    device = torch.device("cpu") if _fsdp(acc) else acc.device
    dit = load_transformer(run.inputs.paths.transformer, device=device, dtype=dtype, fp8="keep" if fp8_dit else "dequantize")
    if fp8_dit and not any(isinstance(m, Fp8Linear) for m in dit.modules()):
        store_fp8(dit)
    if c.preset_lora_path:
        say(run, adapters.merge_preset(dit, c.preset_lora_path))
    return dit


def build_caches(run: Run, projected: bool) -> None:
    c, acc, paths, dit = run.config, run.accelerator, run.inputs.paths, run.dit
    dtype = getattr(torch, c.dtype)
    run.cache = FeatureCache(cache_root(c))
    projection = modules_fingerprint([dit.llm_cond_norm, dit.llm_cond_proj]) if projected else None
    run.text_recipe = TextRecipe(folder_fingerprint(paths.tokenizer), component_fingerprint(paths.text_encoder, "text_encoder"),
                                 projection, dtype)
    vae_print = f"{component_fingerprint(paths.vae, 'vae')}:{dtype}"
    samples = run.inputs.dataset.samples
    run.latent_keys = [latent_key(s, vae_print) for s in samples]
    latents = dict(zip(run.latent_keys, samples))
    captions = {run.text_recipe.key(t): t for t in chain((s.caption for s in samples), (p.caption for p in run.inputs.prompts))}
    if c.task == "sft:train":
        missing = [k for k in latents if not run.cache.has("latents", k)] + [k for k in captions if not run.cache.has("text", k)]
        if missing:
            raise FileNotFoundError(f"--task sft:train: {len(missing)} cache entries are missing in {run.cache.root}; run "
                                    "--task sft:data_process first with the same settings and --cache_dir")
        return
    rank, world = acc.process_index, acc.num_processes
    todo_latents = missing_share(latents, lambda k: run.cache.has("latents", k), rank, world)
    todo_text = missing_share(captions, lambda k: run.cache.has("text", k), rank, world)
    say(run, f"caches in {run.cache.root}: {len(latents)} latents, {len(captions)} {run.text_recipe.kind} text entries; "
             f"building {len(todo_latents)} + {len(todo_text)} on this process")
    plan = MemoryPlan.create("full", acc.device)
    fp8_te = "text_encoder" in {fp8_role(m) for m in split_list(c.fp8_models)}
    progress = lambda kind, n: None  # noqa: E731 — counts are printed above; entries are fast to make
    fill_latents(run.cache, todo_latents, lambda: load_vae(paths.vae, acc.device, dtype), plan, progress)
    fill_text(run.cache, run.text_recipe, todo_text,
              lambda: load_text_encoder(paths.text_encoder, acc.device, dtype, fp8="keep" if fp8_te else "dequantize",
                                        tokenizer_path=paths.tokenizer),
              plan, projector(dit, acc.device) if projected else None, progress)
    acc.wait_for_everyone()


def prepare_run(run: Run) -> None:
    c = run.config
    run.dit = dit = load_dit(run)
    if run.lora:
        names = run.inputs.targets
        if c.lora_checkpoint:
            modules = adapters.continued_modules(dit, names, c.lora_checkpoint, c.lora_rank, run.alpha, c.seed)
        else:
            modules = adapters.initial_modules(dit, names, c.lora_rank, run.alpha, c.seed)
        run.params = adapters.attach(dit, modules)
        say(run, f"LoRA rank {c.lora_rank}, alpha {run.alpha:g} on {len(names)} modules: "
                 f"{adapters.count_parameters(modules):,} fp32 parameters")
    else:
        dit.requires_grad_(True)
        run.params = list(dit.parameters())
        say(run, f"full fine-tune of {sum(p.numel() for p in run.params):,} parameters ({c.dtype}, fp32 optimiser state)")
    text_trains = any(p.requires_grad for p in chain(dit.llm_cond_norm.parameters(), dit.llm_cond_proj.parameters()))
    projected = run.lora and not text_trains
    build_caches(run, projected)
    if c.task == "sft:data_process":
        return
    if projected:
        release_text_projection(dit)
    release_memory()
    prepare_model(run, run.inputs.total_steps)
    if run.inputs.prompts:
        dtype = getattr(torch, c.dtype)
        paths = run.inputs.paths
        fp8 = "keep" if "dit" in {fp8_role(m) for m in split_list(c.fp8_models)} else "dequantize"
        run.validator = Validator(
            run, run.inputs.prompts,
            lambda: None if paths.unconditional_transformer is None else load_transformer(
                paths.unconditional_transformer, "cpu", dtype, fp8, subfolder="unconditional_transformer"),
            lambda: load_vae(paths.vae, "cpu", dtype),
        )


def prepare_model(run: Run, total_steps: int) -> None:
    """Memory passes, optimiser, schedule and Accelerate's wrapping, for `run.dit` whose trainable
    tensors are `run.params` (also what benchmarks/ measures: the step there is this one)."""
    c, acc, dit = run.config, run.accelerator, run.dit
    if run.lora:
        lean_lora(dit)
    if c.use_gradient_checkpointing or c.use_gradient_checkpointing_offload:
        checkpoint_blocks(dit, offload=c.use_gradient_checkpointing_offload)
    optimizer = build_optimizer(c, run.params)
    run.scheduler = build_scheduler(c, optimizer, total_steps)
    if acc.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        # DDP neither broadcasts nor buckets the frozen base: only the trained tensors are its business.
        frozen = [n for n, p in dit.named_parameters() if not p.requires_grad] + [n for n, _ in dit.named_buffers()]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(dit, frozen)
    if _deepspeed(acc):
        configure_deepspeed(run)
    run.model, run.optimizer = acc.prepare(dit, optimizer)
    if _fsdp(acc):
        run.params = list(run.model.parameters())


# ----- 3. the loop ---------------------------------------------------------------------------------

def epoch_batches(sizes: list[tuple[int, int]], repeat: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """One epoch's batches, each a list of (slot, sample index); slot = place in the epoch's order
    (it seeds the sample's time and noise). Seeded by (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(sizes)
    order = torch.randperm(n * repeat, generator=generator).tolist()
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for slot, item in enumerate(order):
        by_size.setdefault(sizes[item % n], []).append((slot, item % n))
    batches = [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def make_batch(run: Run, items: list[tuple[int, int]], epoch: int):
    c = run.config
    samples = run.inputs.dataset.samples
    latents, texts, times, noises = [], [], [], []
    for slot, index in items:
        sample = samples[index]
        x0 = run.cache.load("latents", run.latent_keys[index])
        t, noise = draw(c.seed, epoch, slot, x0.shape[0], sample.height, sample.width, c.logit_mean, c.logit_std)
        latents.append(x0)
        texts.append(run.cache.load("text", run.text_recipe.key(sample.caption)))
        times.append(t)
        noises.append(noise)
    sample = samples[items[0][1]]
    batch = collate(latents, texts, times, noises, token_grid(sample.width, sample.height), run.text_recipe.projection is not None)
    return batch.to(run.accelerator.device)


def _deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def deepspeed_requested() -> bool:
    """`accelerate launch` with a DeepSpeed config (DiffSynth's full/accelerate_config.yaml, or ours)
    tells the processes through this variable; it is read before Accelerate would import deepspeed."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


def configure_deepspeed(run: Run) -> None:
    """Fill the DeepSpeed settings this trainer owns (the launcher's config leaves them to it or sets
    DiffSynth's values): the micro-batch, the accumulation (the engine divides the loss by it and steps
    at the last micro-step), clipping, and permission for our optimisers (DeepSpeed only vouches for
    its own and torch's Adam). ZeRO stage 3 partitions the weights, which this trainer reads whole
    (adapter export, validation, caches), so only stages 0-2 run (docs/training.md, "Several processes
    and GPUs")."""
    c, acc = run.config, run.accelerator
    plugin = acc.state.deepspeed_plugin
    if plugin.zero_stage not in (0, 1, 2):
        raise InputError(f"the DeepSpeed config asks for ZeRO stage {plugin.zero_stage}; this trainer runs stages 0-2 (DiffSynth's "
                         "config is stage 2); for sharded weights use ideogram_app/train/accelerate_configs/fsdp_full.yaml")
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = c.batch_size
    config["gradient_accumulation_steps"] = c.gradient_accumulation_steps
    config["train_batch_size"] = c.batch_size * c.gradient_accumulation_steps * acc.num_processes
    config["gradient_clipping"] = c.max_grad_norm
    config["zero_allow_untested_optimizer"] = True
    for precision in ("fp16", "bf16"):  # weights keep --dtype; the engine must not cast them (no autocast either)
        config[precision] = {"enabled": False}


def micro_step(run: Run, batch, scale: float) -> torch.Tensor:
    """Forward and backward of one batch; the loss is scaled by 1/accumulation for the gradient."""
    loss = flow_matching_loss(run.model, run.dit, batch)
    run.accelerator.backward(loss * scale)
    return loss.detach()


def optimizer_step(run: Run, next_batch, accumulation: int) -> tuple[float, float, float]:
    """One optimiser step over `accumulation` micro-steps (`next_batch(a)` gives micro-step a's batch):
    forward/backward, clipping, AdamW, schedule. Returns (loss averaged over micro-steps and processes,
    gradient norm before clipping, the learning rate the step used). Collective."""
    acc = run.accelerator
    losses = []
    if _deepspeed(acc):
        # The engine divides the loss by the accumulation itself and clips and steps inside the last
        # micro-step's backward; the optimizer.step() below is Accelerate's no-op wrapper then.
        for a in range(accumulation):
            acc.gradient_state._set_sync_gradients(a == accumulation - 1)
            losses.append(micro_step(run, next_batch(a), 1.0))
        grad_norm = acc.clip_grad_norm_(run.params, run.config.max_grad_norm or math.inf)
        grad_norm = math.nan if grad_norm is None else grad_norm
    else:
        for a in range(accumulation):
            with acc.no_sync(run.model) if a < accumulation - 1 else nullcontext():
                losses.append(micro_step(run, next_batch(a), 1.0 / accumulation))
        grad_norm = acc.clip_grad_norm_(run.params, run.config.max_grad_norm or math.inf)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    loss = acc.reduce(torch.stack(losses).mean(), "mean").item()
    if isinstance(grad_norm, DTensor):  # FSDP2 returns the (replicated) total norm as a DTensor
        grad_norm = grad_norm.full_tensor()
    return loss, float(grad_norm), lr


def peak_memory_gib(device: torch.device) -> float:
    """Device memory peak on a GPU; the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class StopRequest:
    """SIGTERM/SIGINT ask for a clean stop at the next step boundary; a second one aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(run: Run, stop: StopRequest) -> str:
    """Optimiser steps until the total; returns "finished" or "stopped"."""
    from tqdm import tqdm

    c, acc = run.config, run.accelerator
    world, accumulation = acc.num_processes, c.gradient_accumulation_steps
    sizes = [s.size for s in run.inputs.dataset.samples]
    steps_per_epoch, total = run.inputs.steps_per_epoch, run.inputs.total_steps
    step, epoch, start = 0, 0, 0
    if c.resume is not None:
        folder = resolve_resume(run.output, c.resume)
        state = load_checkpoint(run, folder)
        step, epoch, start = state["step"], state["epoch"], state["step_in_epoch"]
        run.record.drop_metrics_after(step)
        say(run, f"resumed from {folder} at step {step}")
    if start >= steps_per_epoch:
        epoch, start = epoch + 1, 0
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)
    bar = tqdm(total=total, initial=step, desc="training", unit="step", disable=not acc.is_main_process)
    validated_at = step
    status = "finished"
    while step < total:
        batches = epoch_batches(sizes, c.dataset_repeat, c.batch_size, c.seed, epoch)
        for k in range(start, steps_per_epoch):
            began = time.perf_counter()
            loss, grad_norm, lr = optimizer_step(
                run, lambda a: make_batch(run, batches[(k * accumulation + a) * world + acc.process_index], epoch), accumulation)
            step += 1
            stop_now = acc.reduce(torch.tensor(float(stop.requested), device=acc.device), "sum").item() > 0
            row = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                   "s_per_step": time.perf_counter() - began, "peak_mem_gib": round(peak_memory_gib(acc.device), 3)}
            run.record.log(row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            boundary = k + 1 == steps_per_epoch
            if stop_now or step == total or (c.save_steps and step % c.save_steps == 0) or (c.save_steps is None and boundary):
                save_checkpoint(run, step, epoch, k + 1)
                run.record.update(step=step, last_checkpoint=str(step_folder(run.output, step)))
            if run.validator and c.validation_steps and step % c.validation_steps == 0 and not stop_now:
                validate(run, step)
                validated_at = step
            if stop_now:
                status = "stopped"
                break
            if step >= total:
                break
        if status == "stopped":
            break
        epoch, start = epoch + 1, 0
    bar.close()
    if status == "finished" and run.validator and validated_at != step:
        validate(run, step)
    outputs = write_outputs(run, step, c.trigger)
    if acc.is_main_process:
        run.record.update(step=step, outputs=[str(p) for p in outputs])
    return status


def validate(run: Run, step: int) -> None:
    if run.accelerator.is_main_process:
        paths = run.validator.sample(step)
        say(run, f"validation samples at step {step}: {paths[0].parent}")
    run.accelerator.wait_for_everyone()


# ----- entry point ---------------------------------------------------------------------------------

def make_accelerator(c: TrainConfig) -> Accelerator:
    """The run's Accelerator (never autocast: see docs/training.md, "Several processes and GPUs")."""
    accelerator = Accelerator(
        mixed_precision="no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=c.find_unused_parameters)],
    )
    if accelerator.device.type == "cuda":
        # Only fp32 matmuls change: the LoRA A projection, whose input is a bf16 activation anyway.
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


def run_training(c: TrainConfig, warnings: list[str]) -> int:
    """The whole run; exit status 0 (finished / stopped), 1 (failed during the run), 2 (bad input)."""
    if deepspeed_requested() and importlib.util.find_spec("deepspeed") is None:
        print("error: the accelerate config selects DeepSpeed (distributed_type: DEEPSPEED), but deepspeed is not installed "
              "in this environment: pip install deepspeed, or launch with ideogram_app/train/accelerate_configs/ddp_lora.yaml "
              "(LoRA) or fsdp_full.yaml (full fine-tune)", file=sys.stderr, flush=True)
        return 2
    accelerator = make_accelerator(c)
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if asked != "no":
        warnings = [*warnings, f"the launcher asks for {asked} mixed precision; Ideogram 4 must not train under autocast "
                    "(MRoPE positions start at 65536), so the run keeps its --dtype weights without it"]
    for message in warnings:
        say(accelerator, f"warning: {message}")
    try:
        if _fsdp(accelerator) and c.validation_prompts:
            raise InputError("--validation_prompts: samples during an FSDP run are not supported yet; sample the "
                             "written transformer/ afterwards with the generate CLI")
        if _deepspeed(accelerator) and c.resume is not None:
            raise InputError("--resume: checkpoints of a DeepSpeed run hold the trained weights but not DeepSpeed's partitioned "
                             "optimiser state, so they cannot continue exactly; resume under ddp_lora.yaml / fsdp_full.yaml "
                             "runs, or start again with --lora_checkpoint")
        inputs = check_inputs(c, accelerator.num_processes)
    except InputError as err:
        say(accelerator, f"error: {err}")
        return 2
    for message in inputs.dataset.warnings:
        say(accelerator, f"warning: {message}")
    output = Path(c.output_path)
    settings = as_dict(c)
    run = Run(c, settings, accelerator, output, RunRecord(output, settings, accelerator.is_main_process), inputs,
              model_name=c.model or str(inputs.paths.transformer))
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        remove_partial(output)
    accelerator.wait_for_everyone()
    run.record.update("running", world_size=accelerator.num_processes, distributed=accelerator.distributed_type.value,
                      total_steps=inputs.total_steps,
                      steps_per_epoch=inputs.steps_per_epoch, samples=len(inputs.dataset.samples))
    with StopRequest() as stop:
        try:
            prepare_run(run)
            if c.task == "sft:data_process":
                run.record.update("finished", message="caches built (--task sft:data_process)")
                return 0
            status = train(run, stop)
        except (Exception, KeyboardInterrupt) as err:
            run.record.update("failed", message=f"{type(err).__name__}: {err}")
            if accelerator.is_main_process:
                traceback.print_exc()
            say(run, f"error: the run failed ({type(err).__name__}: {err}); run.json in {output} records it")
            return 1
    run.record.update(status, message="stopped on request; --resume latest continues" if status == "stopped" else None)
    say(run, f"{status}: {output}")
    return 0
