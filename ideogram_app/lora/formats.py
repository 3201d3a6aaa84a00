"""Read a LoRA file in any published key layout and map it onto the DiT's own (fused) module names.

Every producer names the same low-rank factors differently (docs/lora.md has the full table):
a prefix (`diffusion_model.`, `transformer.`, none), kohya's underscored names (`lora_unet_layers_0_…`),
split `to_q/to_k/to_v/to_out.0` instead of the fused `attention.qkv`/`attention.o`, PEFT's
`.default` adapter segment, and alpha either as a tensor, in diffusers' metadata, or not at all.
The classic failure is a LoRA that silently does nothing, so this module is strict: it reports every
key it could not place, refuses a file that places nothing or whose shapes do not fit, and refuses
anything that is not a plain LoRA factor on a module it recognises (DoRA, LoRA biases, LyCORIS),
since ignoring part of an adapter would change the image without saying so.

Split q/k/v become one fused qkv adapter exactly: three factor pairs (A_i, B_i) give the delta
rows [B_q A_q; B_k A_k; B_v A_v], which is B A with A the row-stack of the A_i and B block-diagonal.
When the three A's are identical (a fused LoRA that was split for diffusers) the rank stays r.
"""
from __future__ import annotations

import functools
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from ideogram_app.lora.read import FACTOR_DTYPES, RejectedLora, SafetensorsFile, open_safetensors

QKV_PARTS = ("to_q", "to_k", "to_v")

# Longest first, so `.lora_A.default.weight` is not mistaken for something ending in `.weight`.
_ROLE_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)
_DOTTED_PREFIXES = ("diffusion_model.", "conditional_transformer.", "transformer.", "base_model.model.")
_KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_")
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"

FORMATS = ("comfyui", "diffusers", "kohya", "diffsynth", "onetrainer")


@dataclass
class LoraModule:
    """The adapter of one target Linear: delta W = (alpha / rank) · up @ down."""

    down: torch.Tensor  # A: (rank, in_features)
    up: torch.Tensor  # B: (out_features, rank)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def factor(self) -> float:
        return self.alpha / self.rank


@dataclass
class LoraFile:
    """A LoRA mapped onto our module names, plus what the report needs."""

    source: str
    format: str
    modules: dict[str, LoraModule]
    unmatched: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.modules.values()})

    @property
    def alphas(self) -> list[float]:
        return sorted({m.alpha for m in self.modules.values()})

    @property
    def kinds(self) -> list[str]:
        """Targeted module kinds, block index removed (`attention.qkv`, `final_layer.linear`, …)."""
        return sorted({re.sub(r"^layers\.\d+\.", "", name) for name in self.modules})


@dataclass(frozen=True)
class _Key:
    key: str
    module: str  # the file's module path, prefix removed, dotted
    role: str  # down | up | alpha
    prefix: str
    suffix: str


def module_aliases(targets: Mapping[str, tuple[int, int]]) -> dict[str, tuple[str, int | None]]:
    """Every module path a file may use → (our module name, q/k/v part or None)."""
    aliases: dict[str, tuple[str, int | None]] = {}
    for name in targets:
        aliases[name] = (name, None)
        if name.endswith(".attention.qkv"):
            for part, split_name in enumerate(QKV_PARTS):
                aliases[name[: -len("qkv")] + split_name] = (name, part)
        elif name.endswith(".attention.o"):
            aliases[name[: -len("o")] + "to_out.0"] = (name, None)
    return aliases


def _parse_key(key: str, underscored: Mapping[str, str]) -> _Key | tuple[str, str] | None:
    """A LoRA factor key → _Key; a key with no LoRA role → (prefix, path without prefix) for the caller to judge."""
    for prefix in _KOHYA_PREFIXES:
        if key.startswith(prefix):
            stem, dot, rest = key.partition(".")
            module = underscored.get(stem[len(prefix):], stem)
            role = dict(_ROLE_SUFFIXES).get(dot + rest)
            return _Key(key, module, role, prefix, dot + rest) if role else (prefix, module + dot + rest)
    prefix = next((p for p in _DOTTED_PREFIXES if key.startswith(p)), "")
    body = key[len(prefix):]
    for suffix, role in _ROLE_SUFFIXES:
        if body.endswith(suffix):
            return _Key(key, body[: -len(suffix)], role, prefix, suffix)
    return prefix, body


def _owning_module(path: str, aliases: Mapping[str, object]) -> str | None:
    parts = path.split(".")
    for stop in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:stop]) in aliases:
            return ".".join(parts[:stop])
    return None


def _detect_format(keys: list[_Key], split_names: bool) -> str:
    prefixes = {k.prefix for k in keys}
    suffixes = {k.suffix for k in keys}
    if prefixes & set(_KOHYA_PREFIXES):
        return "kohya"
    if any(".default." in s for s in suffixes):
        return "diffsynth"
    kohya_suffixes = bool(suffixes & {".lora_down.weight", ".lora_up.weight"})
    if "transformer." in prefixes and kohya_suffixes:
        return "onetrainer"
    if split_names or "transformer." in prefixes:
        return "diffusers"
    return "comfyui"


class _DiffusersAlphas:
    """alpha from diffusers' `lora_adapter_metadata` (a PEFT LoraConfig as JSON): `lora_alpha`, with
    `alpha_pattern` entries matched against the end of the module path, as PEFT does."""

    def __init__(self, metadata: Mapping[str, str], where: str):
        self.config: dict | None = None
        raw = metadata.get(DIFFUSERS_METADATA_KEY)
        if raw is None:
            return
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RejectedLora(f"{where}: metadata {DIFFUSERS_METADATA_KEY!r} is not JSON ({exc})") from None
        if not isinstance(config, dict):
            raise RejectedLora(f"{where}: metadata {DIFFUSERS_METADATA_KEY!r} is not a JSON object")
        self.config = {k.removeprefix("transformer."): v for k, v in config.items()}
        if self.config.get("use_dora"):
            raise RejectedLora(f"{where}: metadata says use_dora: DoRA adapters are not supported")
        self.patterns = self.config.get("alpha_pattern") or {}
        if not isinstance(self.patterns, dict):
            raise RejectedLora(f"{where}: alpha_pattern in {DIFFUSERS_METADATA_KEY!r} is not a JSON object")
        for pattern, value in [("lora_alpha", self.config.get("lora_alpha", 1)), *self.patterns.items()]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RejectedLora(f"{where}: alpha {value!r} for {pattern!r} in {DIFFUSERS_METADATA_KEY!r} is not a finite number")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RejectedLora(f"{where}: alpha_pattern key {pattern!r} in {DIFFUSERS_METADATA_KEY!r} is not a regex ({exc})") from None

    def alpha(self, module: str, rank: int) -> float | None:
        if self.config is None:
            return None
        alpha = self.config.get("lora_alpha", rank)
        for pattern, value in self.patterns.items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        if self.config.get("use_rslora"):
            return float(alpha) * math.sqrt(rank)  # rsLoRA scales by alpha/sqrt(r); keep alpha/rank semantics
        return float(alpha)


def read_lora(path: str | Path, targets: Mapping[str, tuple[int, int]]) -> LoraFile:
    """Read `path` and map it onto `targets` ({our module name: (out_features, in_features)}).

    Raises UnreadableLora (not a usable safetensors file) or RejectedLora (nothing matches, a shape
    does not fit, a NaN/Inf or non-float factor, an incomplete pair, an unsupported adapter kind);
    warns when some keys match nothing and lists them in `LoraFile.unmatched`.
    """
    file = open_safetensors(path)
    where = str(file.path)
    aliases = module_aliases(targets)
    underscored = {alias.replace(".", "_"): alias for alias in aliases}
    metadata_alphas = _DiffusersAlphas(file.metadata, where)

    parsed: list[_Key] = []
    unmatched: list[str] = []
    for key in file.entries:
        item = _parse_key(key, underscored)
        if isinstance(item, _Key) and item.module in aliases:
            parsed.append(item)
            continue
        path_in_file = item.module + item.suffix if isinstance(item, _Key) else item[1]
        owner = _owning_module(path_in_file, aliases)
        if owner is not None:
            raise RejectedLora(
                f"{where}: key {key!r} belongs to module {aliases[owner][0]!r} but is not a plain LoRA factor "
                "(supported: lora_A/lora_B/lora_down/lora_up weights and alpha; DoRA, LoRA biases and LyCORIS are not)"
            )
        unmatched.append(key)
    if not parsed:
        sample = ", ".join(repr(k) for k in list(file.entries)[:3]) or "none"
        raise RejectedLora(
            f"{where}: no key matches a module of the Ideogram 4 DiT ({len(file.entries)} keys, first {sample}); "
            "not an Ideogram 4 LoRA, or a layout docs/lora.md does not list"
        )

    groups: dict[tuple[str, int | None], dict[str, _Key]] = {}
    for item in parsed:
        target = aliases[item.module]
        roles = groups.setdefault(target, {})
        if item.role in roles:
            raise RejectedLora(f"{where}: keys {roles[item.role].key!r} and {item.key!r} both give the {item.role} of {target[0]!r}")
        roles[item.role] = item
    for name, part in groups:
        if part is not None and (name, None) in groups:
            fused_key = next(iter(groups[(name, None)].values())).key
            raise RejectedLora(f"{where}: {name!r} has both a fused key {fused_key!r} and split q/k/v keys")

    pairs: dict[tuple[str, int | None], LoraModule] = {}
    for (name, part), roles in groups.items():
        if "down" not in roles or "up" not in roles:
            if set(roles) == {"alpha"}:
                unmatched.append(roles["alpha"].key)
                continue
            have, missing = (roles["down"], "lora_B/lora_up") if "down" in roles else (roles["up"], "lora_A/lora_down")
            raise RejectedLora(f"{where}: key {have.key!r} has no {missing} partner")
        out_features, in_features = targets[name]
        rows = out_features // 3 if part is not None else out_features
        down_shape, up_shape = file.entries[roles["down"].key].shape, file.entries[roles["up"].key].shape
        if len(down_shape) != 2 or down_shape[1] != in_features or down_shape[0] == 0:  # from the header: nothing read yet
            raise RejectedLora(f"{where}: key {roles['down'].key!r} has shape {down_shape}, the model's {name!r} needs (rank, {in_features})")
        rank = down_shape[0]
        if up_shape != (rows, rank):
            raise RejectedLora(f"{where}: key {roles['up'].key!r} has shape {up_shape}, the model's {name!r} needs ({rows}, {rank}) for rank {rank}")
        down = _factor(file, roles["down"].key, where)
        up = _factor(file, roles["up"].key, where)
        if "alpha" in roles:
            alpha = _alpha(file, roles["alpha"].key, where)
        else:
            alpha = metadata_alphas.alpha(roles["down"].module, rank)
            if alpha is None:
                alpha = float(rank)  # no alpha anywhere: scale 1, as every producer without alpha means
        pairs[(name, part)] = LoraModule(down, up, alpha)

    if not pairs:
        raise RejectedLora(f"{where}: only alpha values match the model; no lora_A/lora_B factors")
    modules: dict[str, LoraModule] = {}
    for name in targets:  # model order, so reports and written files are stable
        if (name, None) in pairs:
            modules[name] = pairs[(name, None)]
        elif any((name, p) in pairs for p in range(3)):
            modules[name] = fuse_qkv([pairs.get((name, p)) for p in range(3)], targets[name])

    split = any(item.module.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")) for item in parsed)
    lora = LoraFile(where, _detect_format(parsed, split), modules, unmatched, dict(file.metadata))
    if unmatched:
        warnings.warn(
            f"{where}: {len(unmatched)} of {len(file.entries)} keys match no module of the model and are ignored "
            f"(first: {unmatched[:3]})",
            stacklevel=2,
        )
    return lora


def _factor(file: SafetensorsFile, key: str, where: str) -> torch.Tensor:
    dtype = file.entries[key].dtype
    if dtype not in FACTOR_DTYPES:
        raise RejectedLora(f"{where}: key {key!r} is {dtype}, LoRA factors must be float16, bfloat16, float32 or float64")
    tensor = file.read(key)
    if not torch.isfinite(tensor).all():
        raise RejectedLora(f"{where}: key {key!r} holds NaN or Inf values")
    return tensor


def _alpha(file: SafetensorsFile, key: str, where: str) -> float:
    entry = file.entries[key]
    if math.prod(entry.shape) != 1 or not (entry.dtype.is_floating_point or entry.dtype in (torch.int64, torch.int32, torch.int16)):
        raise RejectedLora(f"{where}: key {key!r} must be one number, got shape {entry.shape} {entry.dtype}")
    value = float(file.read(key).reshape(()).double())
    if not math.isfinite(value):
        raise RejectedLora(f"{where}: key {key!r} is {value}, alpha must be finite")
    return value


def fuse_qkv(parts: list[LoraModule | None], qkv_shape: tuple[int, int]) -> LoraModule:
    """One adapter on the fused qkv from adapters on (any of) q, k and v; delta rows exactly equal.

    Shared A and one alpha/rank (a fused LoRA exported split): A stays, B rows are stacked, rank r.
    Otherwise: A = row-stack of the A_i (rank Σr_i), B block-diagonal; a part's own alpha/rank is
    kept as the common factor when all agree, else folded into its block of B (alpha = rank).
    """
    present = [p for p in parts if p is not None]
    dtype = functools.reduce(torch.promote_types, [t.dtype for p in present for t in (p.down, p.up)])
    if all(p is not None for p in parts):
        a0 = parts[0]
        if all(torch.equal(p.down, a0.down) and p.alpha == a0.alpha for p in parts[1:]):  # type: ignore[union-attr]
            return LoraModule(a0.down.to(dtype), torch.cat([p.up.to(dtype) for p in parts], dim=0), a0.alpha)  # type: ignore[union-attr]
    out_features, _ = qkv_shape
    rows = out_features // 3
    total_rank = sum(p.rank for p in present)
    factors = {p.factor for p in present}
    fold = len(factors) > 1
    if fold:
        dtype = torch.promote_types(dtype, torch.float32)
    up = torch.zeros(out_features, total_rank, dtype=dtype)
    downs = []
    col = 0
    for index, p in enumerate(parts):
        if p is None:
            continue
        block = p.up.to(dtype) * p.factor if fold else p.up.to(dtype)
        up[index * rows : (index + 1) * rows, col : col + p.rank] = block
        downs.append(p.down.to(dtype))
        col += p.rank
    alpha = float(total_rank) if fold else factors.pop() * total_rank
    return LoraModule(torch.cat(downs, dim=0), up, alpha)
