"""Which files make up a pipeline: DiffSynth-style `ModelConfig`s resolved to local component paths.

A `ModelConfig` names files either in a repo (`model_id` + `origin_file_pattern`, e.g.
`transformer/diffusion_pytorch_model.safetensors`) or on disk (`path`). Each one is assigned a role
(`transformer`, `unconditional_transformer`, `text_encoder`, `vae`, `tokenizer`) from its folder name;
a file whose folder says nothing is classified by its safetensors keys, and of two such DiTs the first
is conditional and the second unconditional (DiffSynth's order rule; docs/pipeline.md, "Model sources").
"""
from __future__ import annotations

import fnmatch
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ideogram_app.loading.safetensors_io import read_headers, resolve_safetensors
from ideogram_app.pipeline.hub import ModelSourceError, resolve_model

WEIGHT_ROLES = ("transformer", "unconditional_transformer", "text_encoder", "vae")
ROLES = WEIGHT_ROLES + ("tokenizer",)
# The bf16 repackage ships no tokenizer; DiffSynth's examples take it from the fp8 repo.
TOKENIZER_FALLBACK = {"DiffSynth-Studio/ideogram-4-bf16-repackage": "ideogram-ai/ideogram-4-fp8"}
DEFAULT_TOKENIZER_REPO = "ideogram-ai/ideogram-4-fp8"


@dataclass
class ModelConfig:
    """Files of one component (DiffSynth-compatible). Give `path`, or `model_id` (+ `origin_file_pattern`)."""

    model_id: str | None = None
    origin_file_pattern: str | None = None
    path: str | os.PathLike | None = None
    source: str | None = None  # "huggingface" (default) or "modelscope"

    def __post_init__(self) -> None:
        if (self.model_id is None) == (self.path is None):
            raise ValueError("ModelConfig needs exactly one of model_id=... or path=...")

    def folder_role(self) -> str | None:
        """The role its folder name says, if any."""
        if self.origin_file_pattern:
            head = self.origin_file_pattern.strip("/").split("/")[0]
            return head if head in ROLES else None
        path = Path(self.path)  # type: ignore[arg-type]
        for name in (path.name, path.parent.name):
            if name in ROLES:
                return name
        return None

    def allow_patterns(self) -> list[str] | None:
        """Only the files this config needs, plus the JSON configs beside them."""
        pattern = self.origin_file_pattern
        if not pattern:
            return None
        if pattern.endswith("/"):
            return [pattern + "*"]
        folder = pattern.rsplit("/", 1)[0] if "/" in pattern else ""
        return [pattern, f"{folder}/*.json" if folder else "*.json"]

    def resolve(self) -> Path:
        """Local path of the component: a file, or the folder holding its files."""
        if self.path is not None:
            return resolve_model(self.path, source=self.source)
        root = resolve_model(self.model_id, self.allow_patterns(), source=self.source)  # type: ignore[arg-type]
        pattern = self.origin_file_pattern
        if not pattern:
            return root
        if pattern.endswith("/"):
            target = root / pattern
            if not target.is_dir():
                raise ModelSourceError(f"{self.model_id} has no folder {pattern}")
            return target
        matches = sorted(p for p in root.rglob("*") if fnmatch.fnmatch(p.relative_to(root).as_posix(), pattern))
        if not matches:
            raise ModelSourceError(f"{self.model_id} has no file matching {pattern!r}")
        return matches[0] if len(matches) == 1 else matches[0].parent


@dataclass
class ComponentPaths:
    """Local paths of every component, ready for the loaders."""

    transformer: Path
    text_encoder: Path
    vae: Path
    tokenizer: Path
    unconditional_transformer: Path | None = None
    names: dict[str, str] = field(default_factory=dict)  # role -> what the user asked for (for metadata)

    def weights(self) -> dict[str, Path]:
        """Role -> path of every weight-carrying component present."""
        return {role: getattr(self, role) for role in WEIGHT_ROLES if getattr(self, role) is not None}


def classify_weights(path: Path) -> str:
    """Role of a weights file from its keys: 'dit', 'text_encoder' or 'vae'."""
    keys = read_headers(resolve_safetensors(path)).keys()
    if any(k.startswith(("layers.0.attention.", "llm_cond_proj.")) for k in keys):
        return "dit"
    if any(k.startswith(("language_model.", "model.language_model.")) for k in keys):
        return "text_encoder"
    if any(k.startswith(("decoder.", "encoder.down_blocks.")) for k in keys):
        return "vae"
    raise ValueError(f"{path}: cannot tell which component this is (not a DiT, text encoder or VAE checkpoint)")


def _describe(config: ModelConfig) -> str:
    if config.path is not None:
        return os.fspath(config.path)
    return f"{config.model_id}:{config.origin_file_pattern}" if config.origin_file_pattern else str(config.model_id)


def components_from_configs(model_configs: list[ModelConfig], tokenizer_config: ModelConfig | None) -> ComponentPaths:
    """Resolve (download if needed) every config and give each its role."""
    found: dict[str, Path] = {}
    names: dict[str, str] = {}
    unnamed_dits: list[tuple[Path, str]] = []
    for config in model_configs:
        path = config.resolve()
        role = config.folder_role()
        if role is None and path.is_dir() and any((path / r).is_dir() for r in ROLES):
            repo = components_from_folder(path, _describe(config))
            for r in ROLES:
                value = getattr(repo, r)
                if value is not None and r not in found:
                    found[r], names[r] = value, repo.names[r]
            continue
        if role is None:
            kind = classify_weights(path)
            if kind == "dit":
                unnamed_dits.append((path, _describe(config)))
                continue
            role = kind
        if role in found:
            raise ValueError(f"two model configs provide the {role}: {names[role]} and {_describe(config)}")
        found[role], names[role] = path, _describe(config)
    for path, name in unnamed_dits:
        role = "transformer" if "transformer" not in found else "unconditional_transformer"
        if role in found:
            raise ValueError(f"more than two DiT checkpoints given; {name} has no role left")
        found[role], names[role] = path, name
    if tokenizer_config is not None:
        found["tokenizer"], names["tokenizer"] = tokenizer_config.resolve(), _describe(tokenizer_config)
    elif "tokenizer" not in found and "text_encoder" in found:
        sibling = _component_root(found["text_encoder"]) / "tokenizer"
        if sibling.is_dir():
            found["tokenizer"], names["tokenizer"] = sibling, os.fspath(sibling)
    return _complete(found, names)


def _component_root(path: Path) -> Path:
    """The repo folder above a component file or folder."""
    folder = path.parent if path.is_file() else path
    return folder.parent


def _subfolders(root: Path, label: str) -> tuple[dict[str, Path], dict[str, str]]:
    """Role -> component folder for a repo folder laid out like the published repos."""
    found = {role: root / role for role in ROLES if (root / role).is_dir()}
    return found, {role: f"{label}/{role}" for role in found}


def components_from_folder(root: Path, label: str) -> ComponentPaths:
    return _complete(*_subfolders(root, label))


def _complete(found: dict[str, Path], names: dict[str, str]) -> ComponentPaths:
    missing = [role for role in ("transformer", "text_encoder", "vae") if role not in found]
    if missing:
        raise ValueError(f"no {', '.join(missing)} among the model files; add a ModelConfig for each")
    if "tokenizer" not in found:
        raise ValueError(
            "no tokenizer: pass tokenizer_config=ModelConfig(model_id='ideogram-ai/ideogram-4-fp8', "
            "origin_file_pattern='tokenizer/') or a folder that has tokenizer/"
        )
    return ComponentPaths(
        transformer=found["transformer"],
        unconditional_transformer=found.get("unconditional_transformer"),
        text_encoder=found["text_encoder"],
        vae=found["vae"],
        tokenizer=found["tokenizer"],
        names=names,
    )


def components_from_model(model: str | os.PathLike, source: str | None = None) -> ComponentPaths:
    """The short form: one repo id or local folder holding the usual sub-folders."""
    patterns = [f"{role}/*" for role in ROLES] + ["model_index.json"]
    root = resolve_model(model, patterns, source=source)
    if not root.is_dir():
        raise ValueError(f"{root} is a file; pass a model folder or use model_configs=[ModelConfig(path=...)]")
    found, names = _subfolders(root, os.fspath(model))
    if "tokenizer" not in found and "text_encoder" in found:
        fallback = TOKENIZER_FALLBACK.get(os.fspath(model), DEFAULT_TOKENIZER_REPO if not Path(model).exists() else None)
        if fallback is not None:
            warnings.warn(f"{model} ships no tokenizer; using the one of {fallback}", stacklevel=3)
            found["tokenizer"] = ModelConfig(model_id=fallback, origin_file_pattern="tokenizer/", source=source).resolve()
            names["tokenizer"] = f"{fallback}/tokenizer"
    return _complete(found, names)
