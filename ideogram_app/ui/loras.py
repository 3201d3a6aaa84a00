"""The app's LoRA folder and the LoRAs a generation runs with.

One pipeline serves every session (model_slot.py), but each user picks their own LoRAs. So the
pipeline does not keep a user's choice between runs: every generation hands its selection
(`[(file name, scale), …]`) to `sync_loras` inside the GPU slot, which makes the shared pipeline
carry exactly those LoRAs before it runs. Generations run one at a time (the `gpu` concurrency
group, wiring.py), so no other run can change the pipeline between that call and the image.

LoRAs come from one folder, `loras/` next to the output folder (`IDEOGRAM_LORA_DIR` overrides it,
as `IDEOGRAM_OUTPUT_DIR` does for results). Requests name files in it and nothing else, so no
client can make the server open a path of its choosing. Files reach it by hand (the server's
owner), through an operator's upload in Generate, or from the Train tab (`add_lora_file`); either
way the file is checked against the model (`ideogram_app.lora.read_lora`) before it is listed.

Plain functions; only `picker_update` speaks Gradio (the Train tab uses it to refresh Generate's
picker after adding a file). See docs/app.md, "LoRAs in Generate".
"""
from __future__ import annotations

import math
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from ideogram_app.lora import RejectedLora, UnreadableLora, config_targets, read_lora
from ideogram_app.lora.apply import default_name
from ideogram_app.lora.identity import file_sha256

from .results import output_dir

SUFFIX = ".safetensors"
MAX_LORAS = 4  # per generation: each unmerged LoRA adds a few per cent to every step (docs/lora.md)
SCALE_MIN, SCALE_MAX = -2.0, 2.0  # beyond this a LoRA only breaks the image
PICKER = "lora_pick"  # the Generate panel's multiselect of file names (components registry name)
SHA256 = re.compile(r"[0-9a-f]{64}")



def lora_dir() -> Path:
    """The folder the app's LoRAs live in (created on first use)."""
    configured = os.environ.get("IDEOGRAM_LORA_DIR")
    path = Path(configured).resolve() if configured else output_dir().parent / "loras"
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_loras() -> list[str]:
    """The file names of the LoRAs in the folder, sorted (hidden and temporary files excluded)."""
    found = []
    for entry in os.scandir(lora_dir()):
        if entry.name.endswith(SUFFIX) and not entry.name.startswith(".") and entry.is_file():
            found.append(entry.name)
    return sorted(found)


def lora_name(file_name: str) -> str:
    """The name the pipeline knows a folder file by (and the images' metadata records)."""
    return default_name(file_name)


def checked_file_name(name: str) -> str:
    """A file name for the folder: one path part, `.safetensors` added when missing; ValueError
    naming what is wrong otherwise (a name with `/` or `..` could write outside the folder)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("the LoRA needs a file name")
    name = name.strip()
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"LoRA file name {name!r} must be a plain file name, without folders or a leading '.'")
    if not name.endswith(SUFFIX):
        name += SUFFIX
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name[: -len(SUFFIX)]):
        raise ValueError(f"LoRA file name {name!r}: use letters, digits, '-' and '_' before {SUFFIX} "
                         "(the name is also the LoRA's name in the image metadata)")
    return name


def upload_file_name(uploaded_as: str) -> str:
    """A folder file name from what the user called an upload: unusual characters become `_`, and
    the name starts with a letter or digit (`(v2) ink.safetensors` -> `v2__ink.safetensors`)."""
    return (default_name(uploaded_as).lstrip("_-") or "lora") + SUFFIX


def model_targets(pipe: Any = None) -> dict[str, tuple[int, int]]:
    """What a LoRA may target: the loaded DiT's linears (from its config, so a generation that is
    wrapping layers meanwhile does not matter), or the released model's without a pipeline."""
    return config_targets(getattr(getattr(pipe, "transformer", None), "cfg", None))


def add_lora_file(source_path: str | os.PathLike, name: str | None = None, *, pipe: Any = None) -> str:
    """Copy a LoRA file into the folder and return its file name there.

    `name` defaults to the source's file name (see `checked_file_name`). The copy is checked with
    `read_lora` against `pipe`'s DiT when given (pass the loaded pipeline: a LoRA trained on another
    model size is refused), else against the released model. It is written under a temporary name
    and renamed, so the folder never lists a half-written or unchecked file; a file of the same
    name is replaced (the metadata's sha256 tells results made with the old one apart).
    UnreadableLora / RejectedLora name the file as `name`, never the server's paths; a file
    with keys that match nothing is accepted with the reader's UserWarning.
    """
    source = Path(source_path)
    name = checked_file_name(name if name is not None else source.name)
    folder = lora_dir()
    temporary = folder / f".{uuid.uuid4().hex}.tmp"
    try:
        try:
            shutil.copyfile(source, temporary)
        except OSError:
            raise UnreadableLora(f"{name}: the file cannot be read on the server") from None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                read_lora(temporary, model_targets(pipe))
        except (UnreadableLora, RejectedLora) as err:
            raise type(err)(str(err).replace(str(temporary), name)) from None
        for warning in caught:  # keys that matched nothing: said, under the file's own name
            warnings.warn(str(warning.message).replace(str(temporary), name), warning.category, stacklevel=2)
        os.replace(temporary, folder / name)
    finally:
        temporary.unlink(missing_ok=True)
    return name


def checked_scale(value: Any, where: str) -> float:
    """A LoRA scale from a control or the API: a finite number in [SCALE_MIN, SCALE_MAX]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: the scale must be a number from {SCALE_MIN:g} to {SCALE_MAX:g}, got {value!r}")
    if not SCALE_MIN <= value <= SCALE_MAX:
        raise ValueError(f"{where}: scale {value:g} is outside {SCALE_MIN:g} to {SCALE_MAX:g}")
    return float(value)


def checked_selection(names: Sequence[str] | None, scales: Sequence[Any], where: str = "LoRAs") -> list[tuple[str, float]]:
    """The LoRAs a request asks for, as `[(file name, scale), …]`: at most MAX_LORAS distinct files
    that are in the folder now, each with a valid scale. ValueError naming the problem."""
    if names is not None and not isinstance(names, (list, tuple)):
        raise ValueError(f"{where}: expected a list of file names, got {type(names).__name__}")
    names = list(names or [])
    if len(names) > MAX_LORAS:
        raise ValueError(f"{where}: {len(names)} LoRAs asked for; at most {MAX_LORAS} per generation")
    if len(scales) < len(names):
        raise ValueError(f"{where}: {len(names)} LoRAs but {len(scales)} scales")
    available = set(list_loras())
    chosen: list[tuple[str, float]] = []
    for name, scale in zip(names, scales):
        if not isinstance(name, str) or name not in available:
            listed = ", ".join(sorted(available)[:20]) or "none"
            raise ValueError(f"{where}: {name!r} is not in the server's LoRA folder (available: {listed})")
        if any(name == other for other, _ in chosen):
            raise ValueError(f"{where}: {name} is asked for twice")
        chosen.append((name, checked_scale(scale, f"{where}: {name}")))
    taken: dict[str, str] = {}
    for name, _ in chosen:
        if lora_name(name) in taken:
            raise ValueError(f"{where}: {taken[lora_name(name)]} and {name} have the same LoRA name "
                             f"{lora_name(name)!r}; rename one of the files")
        taken[lora_name(name)] = name
    return chosen


def parse_lora_args(items: Iterable[Any] | None) -> list[tuple[str, float]]:
    """The API's `loras` parameter (`["file.safetensors:0.8", "style.safetensors"]`, scale 1 when
    omitted) as a checked selection."""
    if items is None:
        return []
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise ValueError(f"loras must be a list of \"name:scale\" strings, got {type(items).__name__}")
    names, scales = [], []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"loras: each entry must be a \"name:scale\" string, got {type(item).__name__}")
        name, sep, scale = item.rpartition(":")
        if not sep:
            name, scale = item, "1"
        try:
            value = float(scale)
        except ValueError:
            raise ValueError(f"loras: {item!r}: the scale after ':' must be a number") from None
        names.append(name)
        scales.append(value)
    return checked_selection(names, scales, "loras")


def sync_loras(pipe: Any, wanted: Sequence[tuple[str, float]]) -> None:
    """Make `pipe` carry exactly the LoRAs `wanted` (`[(file name, scale), …]`, from
    `checked_selection`), in that order, on its conditional DiT.

    Call it inside the GPU slot of a generation. LoRAs already on in the same order (the common
    case: the same user generating again) stay and are rescaled; a file replaced in the folder since
    it was loaded (another sha256) is loaded again; everything from the first difference on is
    unloaded and loaded in order, so the stacking order — and with it the floating-point sum — is
    always the order asked for, whatever the previous user chose.
    """
    folder = lora_dir()
    wanted = [(name, float(scale), file_sha256(folder / name)) for name, scale in wanted]
    loaded = pipe.loras
    keep = 0
    for row, (name, _, digest) in zip(loaded, wanted):
        if (row["target"], row["file"], row["sha256"], row["merged"], row["name"]) != (
                "transformer", name, digest, False, lora_name(name)):
            break
        keep += 1
    for row in reversed(loaded[keep:]):
        pipe.unload_lora(row["name"])
    for row, (name, scale, _) in zip(loaded[:keep], wanted):
        if row["scale"] != scale:
            pipe.set_lora_scale(row["name"], scale)
    for name, scale, _ in wanted[keep:]:
        try:
            pipe.load_lora(folder / name, scale=scale, name=lora_name(name))
        except (UnreadableLora, RejectedLora) as err:  # a file put in the folder by hand, for another model
            raise type(err)(str(err).replace(str(folder / name), name)) from None


def restore_selection(loras: Any) -> tuple[list[tuple[str, float]], list[str]]:
    """The picker selection that re-makes a result: `(selection, notes)`.

    `loras` is the result's `settings["loras"]` (client data when it comes from an uploaded PNG:
    every field is checked). Each LoRA is found in the folder by its sha256 — the same weights,
    under whatever name the file has now — else by its file name, with a note that the contents
    differ. Notes also say what is missing, what is not a LoRA the picker can put on, and what
    does not fit.
    """
    if loras is None:
        return [], []
    if not isinstance(loras, list):
        return [], ["its LoRA list is not in the expected form; no LoRA is selected"]
    folder = lora_dir()
    names = list_loras()
    by_hash: dict[str, str] = {}
    selection: list[tuple[str, float]] = []
    notes: list[str] = []
    for index, row in enumerate(loras):
        file = row.get("file") if isinstance(row, dict) else None
        scale = row.get("scale") if isinstance(row, dict) else None
        digest = row.get("sha256") if isinstance(row, dict) else None
        if not isinstance(file, str):
            notes.append(f"LoRA {index + 1} of its metadata has no file name")
            continue
        label = file[:80]
        if row.get("target", "transformer") != "transformer":
            notes.append(f"{label} was on the {row.get('target')!s:.40} and is not restored (the picker puts LoRAs "
                         "on the conditional transformer only)")
            continue
        try:
            scale = checked_scale(scale, label)
        except ValueError as err:
            notes.append(str(err))
            continue
        found = None
        if isinstance(digest, str) and SHA256.fullmatch(digest):
            if not by_hash:
                for name in names:  # the first of several copies, unless one has the recorded name
                    by_hash.setdefault(file_sha256(folder / name), name)
            found = file if file in names and file_sha256(folder / file) == digest else by_hash.get(digest)
        if found is None and file in names:
            found = file
            if isinstance(digest, str):
                notes.append(f"{file} in the LoRA folder is not the file this result was made with "
                             "(another sha256); it is selected anyway")
        if found is None:
            notes.append(f"{label} is not in the LoRA folder")
        elif any(found == other for other, _ in selection):
            notes.append(f"{label} appears twice")
        elif len(selection) >= MAX_LORAS:
            notes.append(f"{label} is not selected: at most {MAX_LORAS} LoRAs per generation")
        else:
            selection.append((found, scale))
    return selection, notes


def picker_update(selected: Sequence[str]) -> dict:
    """The Gradio update for the `lora_pick` dropdown: the folder's files as choices, `selected`
    (those still in the folder, at most MAX_LORAS) as the value. A tab that adds a file returns
    `{"lora_pick": picker_update(current + [name])}`; the Generate panel then shows a scale slider
    for each selected LoRA, keeping the scales already set (docs/app.md, "LoRAs in Generate")."""
    import gradio as gr

    choices = list_loras()
    value = [name for name in dict.fromkeys(selected or []) if name in choices][:MAX_LORAS]
    return gr.update(choices=choices, value=value)
