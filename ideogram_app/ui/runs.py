"""The Train tab's files and processes, without Gradio: the training data folder, datasets (uploads,
zip imports, caption sidecars and their status) and a small manager of trainer processes.

Layout (docs/app.md, "Train tab"): `data_dir()/<owner>/datasets/<name>/` holds images with their
caption sidecars (`<stem>.json` canonical, or `<stem>.txt` plain text, which is what the trainer
reads from a folder), and `data_dir()/<owner>/runs/<name>/` is a trainer output folder plus two
files of the app's own: `launch.json` (the settings, the command line, the process id) and
`train.log` (the trainer's stdout and stderr). `<owner>` is `user-<login>` under `--auth`, else
`local`. The data folder is not one of the folders Gradio serves: a dataset's images are shown
through thumbnails and preview copies with unguessable names (`preview_copy`).

Why a subprocess: a trainer that runs out of memory, segfaults or is killed must not take the app
with it. Each run starts in its own session (process group), so a stop signal reaches the trainer
and nothing else, and a run outlives an app restart; the runs list is read from the run folders
(`run.json`, written by the trainer, and `launch.json`), so it survives one too. Stop is SIGTERM:
the trainer finishes its step, writes a checkpoint and its LoRA and marks the run `stopped`.

Using a run: `lora_choices`/`lora_source` pick the final LoRA or a checkpoint's, `native_download` and
`diffusers_export` write scratch copies for download. `estimate_line` turns the measured training steps
(`MEASURED`) into the Train tab's memory/time line.

One GPU lease: while a run this process started is alive, `gpu_busy()` says so, for Generate to
refuse with that message before it touches the pipeline (training and generation together would
run the GPU out of memory without saying why).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ideogram_app.caption import PlainText, parse, to_json, verify
from ideogram_app.caption.issues import CaptionFormatError, CaptionSyntaxError
from ideogram_app.limits import DEFAULT_LIMITS, LimitError, Limits
from ideogram_app.train.config import SETTINGS, Setting, config_from_values
from ideogram_app.train.data import IMAGE_SUFFIXES, DataError, metadata_rows

from .results import output_dir, owner_folder

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LAUNCH_FILE, LOG_FILE = "launch.json", "train.log"
CAPTION_SUFFIXES = (".json", ".txt")
METADATA_SUFFIXES = (".csv", ".jsonl")  # DiffSynth metadata files (a .json one is a JSON list, a caption is an object)
FINAL = "final"  # the run's own LoRA file, as opposed to a checkpoint's
MAX_DATASET_FILES = 500  # images (and sidecars) in one upload or zip
MAX_ZIP_BYTES = 512 * 2**20  # uncompressed total of one zip
METRICS_CHUNK = 1 << 20  # most bytes of metrics.jsonl read per poll (a bounded tail on the first read)
LOG_TAIL_BYTES = 12_000
PREVIEW_SIDE = 1024
EXIT_WAIT_S = 15  # how long Resume waits for a trainer that has marked its run stopped to exit
PREVIEW_TTL_S = 6 * 3600
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding `ideogram_app`

# Caption statuses shown in the dataset grid.
MISSING, PLAIN, ERRORS, CLEAN = "missing", "plain text", "verifier errors", "clean"


class TrainFilesError(ValueError):
    """A dataset or run request that cannot be done; the message names the file, run or setting."""


# ----- where things live ------------------------------------------------------------------------

def data_dir() -> Path:
    """The training data folder: `IDEOGRAM_TRAIN_DIR`, else `training/` beside the output folder
    (not inside it: the output folder is served to browsers)."""
    configured = os.environ.get("IDEOGRAM_TRAIN_DIR")
    path = Path(configured).resolve() if configured else output_dir().parent / "training"
    path.mkdir(parents=True, exist_ok=True)
    return path


def owner_of(username: str | None) -> str:
    """Whose folders: the login under --auth, else the machine's user (training is operator-only,
    and without logins the only operators are the users of this machine)."""
    return owner_folder(username) if username else "local"


def datasets_dir(owner: str) -> Path:
    path = data_dir() / owner / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(owner: str) -> Path:
    path = data_dir() / owner / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str, what: str) -> str:
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise TrainFilesError(f"{what} name {name!r} must be 1-64 letters, digits, '_', '-' or '.', starting with a "
                              "letter or digit")
    return name


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


# ----- datasets ---------------------------------------------------------------------------------

def dataset_images(folder: Path) -> list[Path]:
    """The images of a dataset folder, as the trainer finds them (sorted, hidden entries skipped)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _safe_member_name(name: str) -> str | None:
    """A zip member or upload name reduced to a plain file name in the dataset, or None to skip it."""
    base = Path(name.replace("\\", "/")).name
    if not base or base.startswith(".") or Path(base).suffix.lower() not in (*IMAGE_SUFFIXES, *CAPTION_SUFFIXES,
                                                                             *METADATA_SUFFIXES):
        return None
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(base).stem)[:80] or "image"
    return stem + Path(base).suffix.lower()


def _check_image_bytes(name: str, data: bytes, limits: Limits) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise LimitError(f"{name}: larger than {limits.max_image_pixels / 1e6:.0f} MP") from None
    except Exception:  # noqa: BLE001 — Pillow raises many types for a file that is not an image
        raise TrainFilesError(f"{name} is not an image this app can read (PNG, JPEG or WebP)") from None
    limits.check_image_pixels(name, width, height)


def import_files(folder: Path, uploads: list[tuple[str, Path]], limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Copy uploaded files (images, caption sidecars, zips of them) into dataset `folder`; -> the
    names written. Everything is checked before anything is written: sizes (each file and the zip's
    uncompressed total), counts, image headers. Names are flattened into the folder. DiffSynth
    metadata files among them (.csv, .jsonl, or a .json holding a list) are not copied: their
    prompts become the sidecar captions of the images they name (`import_metadata`)."""
    entries: dict[str, bytes] = {}
    metadata: dict[str, bytes] = {}

    def add(name: str, data: bytes) -> None:
        safe = _safe_member_name(name)
        if safe is None:
            return
        if safe in entries:
            raise TrainFilesError(f"two files would be called {safe} in the dataset; rename one")
        if len(entries) >= MAX_DATASET_FILES:
            raise LimitError(f"more than {MAX_DATASET_FILES} files in one upload")
        limits.check_upload_bytes(name, len(data))
        if Path(safe).suffix in IMAGE_SUFFIXES:
            _check_image_bytes(name, data, limits)
        if Path(safe).suffix in METADATA_SUFFIXES or (Path(safe).suffix == ".json" and data.lstrip()[:1] == b"["):
            metadata[safe] = data
            return
        entries[safe] = data

    for shown, path in uploads:
        limits.check_upload_bytes(shown, os.path.getsize(path))
        if Path(shown).suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [m for m in archive.infolist() if not m.is_dir()]
                    total = sum(m.file_size for m in members)
                    if total > MAX_ZIP_BYTES:
                        raise LimitError(f"{shown} unpacks to {total / 2**20:.0f} MiB; at most "
                                         f"{MAX_ZIP_BYTES / 2**20:.0f} MiB are accepted")
                    for member in members:
                        if _safe_member_name(member.filename) is None:
                            continue
                        limits.check_upload_bytes(f"{shown}: {member.filename}", member.file_size)
                        with archive.open(member) as handle:  # read at most the limit, whatever the header says
                            data = handle.read(limits.max_upload_bytes + 1)
                        add(member.filename, data)
            except zipfile.BadZipFile:
                raise TrainFilesError(f"{shown} is not a zip file that can be read") from None
        else:
            if _safe_member_name(shown) is None:
                raise TrainFilesError(f"{shown}: only images ({', '.join(IMAGE_SUFFIXES)}), .json/.txt captions, "
                                      ".csv/.jsonl/.json metadata files and .zip files of them can be added to a dataset")
            add(shown, Path(path).read_bytes())
    if not any(Path(n).suffix in IMAGE_SUFFIXES for n in entries) and not (metadata and dataset_images(folder)):
        raise TrainFilesError("the upload holds no images")
    for name, data in entries.items():
        target = folder / name
        temporary = target.with_name(f".{name}.{uuid.uuid4().hex[:6]}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
    for name, data in metadata.items():
        import_metadata(folder, name, data)
    return sorted([*entries, *metadata])


def import_metadata(folder: Path, name: str, data: bytes) -> int:
    """Write the prompts of DiffSynth metadata file `name` (its bytes: `data`) as the sidecar captions
    of the dataset's images; -> how many. It is read by the trainer's own reader (train/data.py:
    the `image` column, a `prompt` column of text or caption objects), so a file the trainer would
    refuse is refused here with the same messages. Image paths are matched by file name, as uploads
    are flattened into the folder; a row naming an image the dataset lacks, or a prompt that is not
    a valid caption, refuses the whole file before any sidecar is written."""
    scratch = folder / f".{uuid.uuid4().hex[:8]}-{name}"
    scratch.write_bytes(data)
    try:
        rows = metadata_rows(scratch, folder, ["image"])
    except DataError as err:
        raise TrainFilesError("; ".join(p.replace(scratch.name, name) for p in err.problems)[:2000]) from None
    finally:
        scratch.unlink(missing_ok=True)
    if len(rows) > MAX_DATASET_FILES:
        raise LimitError(f"{name} has {len(rows)} rows; at most {MAX_DATASET_FILES} are imported at once")
    images = {p.name: p for p in dataset_images(folder)}
    plan, problems = [], []
    for row in rows:
        label = row.label.replace(scratch.name, name)
        image = images.get(_safe_member_name(row.image.name) or "")
        if image is None:
            problems.append(f"{label}: no image {row.image.name!r} in the dataset")
            continue
        prompt = json.dumps(row.prompt, ensure_ascii=False) if isinstance(row.prompt, dict) else row.prompt
        if not isinstance(prompt, str):
            problems.append(f"{label}: 'prompt' must be text or a caption object, got {type(row.prompt).__name__}")
            continue
        try:
            parse(prompt)
        except (CaptionSyntaxError, CaptionFormatError) as err:
            problems.append(f"{label}: {err}")
            continue
        plan.append((image, prompt))
    if problems:
        raise TrainFilesError("; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)"
                                                                         if len(problems) > 10 else ""))
    for image, prompt in plan:
        write_caption(image, prompt)
    return len(plan)


def create_dataset(owner: str, name: str | None, uploads: list[tuple[str, Path]], limits: Limits = DEFAULT_LIMITS) -> Path:
    """A new dataset folder holding the uploads (removed again if they are refused)."""
    name = check_name(name, "dataset") if name else fresh_name("dataset")
    folder = datasets_dir(owner) / name
    if folder.exists():
        raise TrainFilesError(f"dataset {name!r} exists already; choose another name or open it")
    folder.mkdir()
    try:
        import_files(folder, uploads, limits)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def dataset_roots(owner: str, extra: tuple[Path, ...] = ()) -> list[Path]:
    """Where a user may open datasets from: their own datasets folder and the server's extra roots."""
    return [datasets_dir(owner), *extra]


def list_datasets(owner: str, extra: tuple[Path, ...] = ()) -> list[str]:
    found = []
    for root in dataset_roots(owner, extra):
        try:
            found += sorted(str(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
    return found


def resolve_dataset(owner: str, text: str, extra: tuple[Path, ...] = ()) -> Path:
    """The dataset folder `text` names, if it is one of `list_datasets` (the same refusal whether a
    folder is missing or outside the roots, so the answer tells nothing about other server paths)."""
    if text in list_datasets(owner, extra):
        return Path(text)
    raise TrainFilesError(f"{text!r} is not one of your datasets; upload images or pick one from the list")


def sidecar(image: Path) -> Path | None:
    return next((image.with_suffix(s) for s in CAPTION_SUFFIXES if image.with_suffix(s).is_file()), None)


@dataclass(frozen=True)
class CaptionStatus:
    status: str  # MISSING, PLAIN, ERRORS or CLEAN
    text: str | None  # the sidecar's text
    detail: str = ""  # the first verifier error


def caption_status(image: Path) -> CaptionStatus:
    """What the trainer will find for `image`: no sidecar, plain text, a JSON caption with verifier
    errors, or a clean one (warnings allowed: the trainer canonicalises)."""
    path = sidecar(image)
    if path is None:
        return CaptionStatus(MISSING, None)
    try:
        text = path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError):
        return CaptionStatus(ERRORS, None, f"{path.name} cannot be read as UTF-8 text")
    if path.suffix == ".txt":
        return CaptionStatus(PLAIN, text)
    errors = [i for i in verify(text) if i.severity == "error"]
    if any(i.code == "plain_text" for i in errors) or (not errors and isinstance(_parse_quiet(text), PlainText)):
        return CaptionStatus(PLAIN, text)
    if errors:
        return CaptionStatus(ERRORS, text, str(errors[0]))
    return CaptionStatus(CLEAN, text)


def _parse_quiet(text: str):
    try:
        return parse(text)
    except (CaptionSyntaxError, CaptionFormatError):
        return None


def write_caption(image: Path, prompt: str) -> Path:
    """Write `prompt` as `image`'s sidecar: a caption as canonical JSON in `<stem>.json`, prose as
    `<stem>.txt` (the other sidecar is removed, so the trainer reads this one)."""
    parsed = parse(prompt)  # raises CaptionSyntaxError / CaptionFormatError with what is wrong
    target, text = (image.with_suffix(".txt"), parsed.text) if isinstance(parsed, PlainText) else \
        (image.with_suffix(".json"), to_json(parsed))
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    for other in CAPTION_SUFFIXES:
        if image.with_suffix(other) != target:
            image.with_suffix(other).unlink(missing_ok=True)
    return target


def copy_caption_to_all(folder: Path, prompt: str, source: Path | None = None) -> int:
    """Write `prompt` as the sidecar of every image of the dataset except `source`; -> how many."""
    count = 0
    for image in dataset_images(folder):
        if image != source:
            write_caption(image, prompt)
            count += 1
    return count


def thumbnail(image: Path, side: int = 160) -> Image.Image:
    with Image.open(image) as opened:
        opened.draft("RGB", (side, side))
        small = opened.convert("RGB")
    small.thumbnail((side, side))
    return small


def preview_copy(image: Path) -> tuple[str, int, int]:
    """A downscaled copy of a dataset image, under an unguessable name in a folder the app serves
    (the canvas shows it as its background); -> (path, original width, height). Old copies are pruned."""
    folder = output_dir() / "train-previews"
    folder.mkdir(exist_ok=True)
    cutoff = time.time() - PREVIEW_TTL_S
    for entry in os.scandir(folder):
        try:
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass
    with Image.open(image) as opened:
        width, height = opened.size
        copy = opened.convert("RGB")
    copy.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    path = folder / f"{uuid.uuid4().hex}.png"
    copy.save(path)
    return str(path), width, height


# ----- settings -> command line -----------------------------------------------------------------

def train_command(values: dict[str, Any]) -> list[str]:
    """`[python, -m, ideogram_app.train, flags…]` for {setting name: value}, checked by the trainer's
    own `config_from_values` first (raises ConfigError naming each flag). Only values that differ
    from the default are written, in the order of SETTINGS; a list, never a shell string."""
    config, _ = config_from_values(values)
    argv = [sys.executable, "-m", "ideogram_app.train"]
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if setting.kind == "flag":
            if value:
                argv.append(setting.flag)
        elif value is not None and value != setting.default:
            argv += [setting.flag, _flag_text(setting, value)]
    return argv


def _flag_text(setting: Setting, value: Any) -> str:
    if setting.type is float:
        return repr(float(value))
    return str(value)


def shown_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The command line for people to copy (`python` instead of the interpreter's full path), with
    the environment the app sets for the run (`CUDA_VISIBLE_DEVICES` for one chosen GPU) in front."""
    import shlex

    prefix = [f"{name}={shlex.quote(value)}" for name, value in (env or {}).items()]
    return " ".join([*prefix, shlex.join(["python", *argv[1:]])])


# ----- GPUs and base variants -------------------------------------------------------------------

ACCELERATE_CONFIGS = PACKAGE_ROOT / "ideogram_app" / "train" / "accelerate_configs"
BASE_VARIANTS = ("bf16", "fp8", "nf4")


def gpu_count() -> int:
    """CUDA devices this process sees (0 without CUDA): the ids a run may be given."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(ids: Any, detected: int) -> list[int]:
    """The chosen GPU ids as sorted ints, each checked against the `detected` count on the server
    (a page's event can be called with any value, so the choice list is no guarantee)."""
    chosen = []
    for raw in ids or []:
        text = str(raw).strip()
        if not text.isdigit() or int(text) >= detected:
            where = f"ids 0-{detected - 1}" if detected else "none (no CUDA device)"
            raise TrainFilesError(f"GPU {raw!r} is not a GPU of this machine; it has {detected} ({where})")
        if int(text) in chosen:
            raise TrainFilesError(f"GPU {text} is chosen twice")
        chosen.append(int(text))
    return sorted(chosen)


def launch_plan(argv: list[str], values: dict[str, Any], gpus: list[int]) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) to run trainer command `argv` on `gpus` (checked ids): none → as
    is; one → `CUDA_VISIBLE_DEVICES` in the subprocess's environment (the trainer uses cuda:0, which
    is then that GPU); several → one process per GPU through accelerate's launcher with the shipped
    config: DDP for a LoRA, FSDP for a full fine-tune (`--trainable_models`), as docs/training.md
    describes."""
    if not gpus:
        return argv, {}
    if len(gpus) == 1:
        return argv, {"CUDA_VISIBLE_DEVICES": str(gpus[0])}
    config = ACCELERATE_CONFIGS / ("fsdp_full.yaml" if values.get("trainable_models") else "ddp_lora.yaml")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(len(gpus)), "--gpu_ids", ",".join(map(str, gpus)), *argv[1:]], {}


def apply_base_variant(values: dict[str, Any], variant: str, cuda: bool | None = None) -> dict[str, Any]:
    """`values` for base `variant`: bf16 as given, fp8 with `--fp8_models dit`, nf4 only when the
    model's transformer is an NF4 checkpoint (its safetensors header; the trainer quantises nothing)
    and this machine has CUDA (`cuda`, detected when None) and bitsandbytes — refused here, before a
    run folder exists, rather than by the trainer after it started (docs/training.md, "LoRA on an
    NF4 base")."""
    if variant not in BASE_VARIANTS:
        raise TrainFilesError(f"base variant {variant!r} is not one of {', '.join(BASE_VARIANTS)}")
    if variant == "bf16":
        return dict(values)
    if variant == "fp8":
        return {**values, "fp8_models": "dit"}
    from ideogram_app.loading.checkpoint_layout import detect_dit_layout
    from ideogram_app.loading.safetensors_io import describe_files, read_headers, resolve_safetensors

    model = str(values.get("model") or "")
    try:
        files = resolve_safetensors(model, "transformer")
        where = describe_files(files)
        layout = detect_dit_layout(read_headers(files), where)
    except (OSError, ValueError) as err:
        raise TrainFilesError(f"base variant nf4 needs a local model folder whose transformer is an NF4 checkpoint; "
                              f"{model or 'no model'}: {err}") from None
    if layout.weights != "nf4":
        raise TrainFilesError(f"base variant nf4: {where} holds {layout.weights} weights, not NF4; choose an NF4 "
                              f"checkpoint (such as ideogram-4-nf4) or the {'fp8' if layout.weights == 'fp8' else 'bf16'} variant")
    if values.get("trainable_models"):
        raise TrainFilesError("base variant nf4 trains a LoRA only (4-bit weights cannot take updates); clear "
                              "--trainable_models")
    if cuda is None:
        cuda = gpu_count() > 0
    if not cuda:
        raise TrainFilesError(f"base variant nf4: {where} holds bitsandbytes NF4 weights, which run only on a CUDA "
                              "GPU; this machine has none")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainFilesError("base variant nf4 needs bitsandbytes on the server (pip install 'bitsandbytes>=0.45')") from None
    return dict(values)


# ----- runs -------------------------------------------------------------------------------------

@dataclass
class RunInfo:
    """One run as the tab lists it."""

    name: str
    folder: Path
    status: str  # running, finished, failed, stopped, starting, interrupted
    message: str | None = None
    step: int = 0
    total_steps: int | None = None
    final_loss: float | None = None
    lora: Path | None = None
    checkpoints: list[str] = field(default_factory=list)
    command: str = ""
    started: float | None = None
    alive: bool = False


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def tail_bytes(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    # tqdm redraws its bar with carriage returns: keep the last state of each line
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def log_errors(folder: Path) -> str | None:
    """What the trainer said when it refused to start: its log from the first `error:` line of the
    last attempt (the message may go on over several lines, one per problem), at most 4000 characters."""
    text = tail_bytes(folder / LOG_FILE, 64_000).rsplit("\n$ ", 1)[-1]
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if first is None:
        return None
    return "\n".join([lines[first].removeprefix("error: "), *lines[first + 1:]]).strip()[:4000]


@dataclass
class MetricsCursor:
    """Where the last poll stopped in a run's metrics.jsonl (the tab keeps one per session)."""

    folder: str = ""
    offset: int = 0
    size_seen: int = 0


def read_new_metrics(folder: Path, cursor: MetricsCursor, chunk: int = METRICS_CHUNK) -> tuple[list[dict], MetricsCursor, bool]:
    """Rows added since `cursor` (complete lines only, at most `chunk` bytes; a first read of a long
    file starts `chunk` bytes before its end); -> (rows, new cursor, reset). `reset` is True when the
    file shrank (a resumed run drops the rows after its checkpoint), so the caller starts over."""
    path = Path(folder) / "metrics.jsonl"
    reset = cursor.folder != str(folder)
    offset = 0 if reset else cursor.offset
    try:
        size = path.stat().st_size
    except OSError:
        return [], MetricsCursor(str(folder), 0, 0), reset
    if size < offset:
        offset, reset = 0, True
    skip_partial = False
    if size - offset > chunk and offset == 0:
        offset, skip_partial = size - chunk, True
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(min(chunk, size - offset))
    end = data.rfind(b"\n")
    if end < 0:
        return [], MetricsCursor(str(folder), offset, size), reset
    body = data[:end + 1]
    lines = body.split(b"\n")
    if skip_partial:
        lines = lines[1:]
    rows = []
    for line in lines:
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows, MetricsCursor(str(folder), offset + len(body), size), reset


class GpuLease:
    """The runs this process started that are still alive: while there is one, the GPU is taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[str, subprocess.Popen] = {}

    def take(self, name: str, process: subprocess.Popen) -> None:
        with self._lock:
            self._holders[name] = process

    def holder(self) -> str | None:
        with self._lock:
            for name, process in list(self._holders.items()):
                if process.poll() is not None:
                    del self._holders[name]
            return next(iter(self._holders), None)


LEASE = GpuLease()


def gpu_busy() -> str | None:
    """Why Generate must wait (a training run holds the GPU), or None when it may run."""
    holder = LEASE.holder()
    if holder is None:
        return None
    return (f"A training run ({holder}) is using the GPU. Generation is paused until it finishes; stop it in the "
            "Train tab to generate now.")


class RunManager:
    """Starts, stops, resumes, deletes and lists the trainer processes of the runs folders."""

    def __init__(self, lease: GpuLease = LEASE):
        self.lease = lease
        self._lock = threading.Lock()
        self._processes: dict[str, subprocess.Popen] = {}

    # -- start / stop / resume / delete --

    def start(self, owner: str, name: str | None, values: dict[str, Any], validation_prompts: str | None = None,
              gpus: Any = (), detected: int | None = None) -> RunInfo:
        """A new run folder and a trainer process for `values` (settings by name; `output_path` and
        `resume` are the manager's) on GPU ids `gpus` (checked against `detected`, gpu_count() when
        None; `launch_plan`). `validation_prompts` (JSON lines) is written into the run folder
        as the --validation_prompts file. Raises ConfigError (settings) or TrainFilesError; a refused
        start leaves no folder behind."""
        gpus = check_gpus(gpus, gpu_count() if detected is None else detected)
        for reserved in ("output_path", "resume"):
            if values.get(reserved) not in (None, ""):
                raise TrainFilesError(f"--{reserved} is chosen by the app (the run folder, Resume)")
        name = check_name(name, "run") if name else fresh_name("run")
        folder = runs_dir(owner) / name
        if folder.exists():
            raise TrainFilesError(f"run {name!r} exists already; choose another name, or Resume or Delete it")
        folder.mkdir()
        try:
            values = {**values, "output_path": str(folder)}
            if validation_prompts and validation_prompts.strip():
                prompts = folder / "validation_prompts.jsonl"
                prompts.write_text(validation_prompts.strip() + "\n", encoding="utf-8")
                values["validation_prompts"] = str(prompts)
            argv = train_command(values)  # the trainer's own checks of every setting
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._launch(folder, values, argv, gpus)

    def resume(self, folder: Path, max_steps: int | None = None) -> RunInfo:
        """Continue a stopped, interrupted or failed run in its folder (`--resume latest` from its last
        checkpoint; a run the trainer refused before writing anything starts again), with the same
        settings, or another `max_steps` (the trainer allows that change)."""
        info = self.info(folder)
        deadline = time.monotonic() + EXIT_WAIT_S
        while info.alive and info.status in ("stopped", "failed", "finished") and time.monotonic() < deadline:
            time.sleep(0.1)  # the trainer has written its final status and is exiting
            info = self.info(folder)
        if info.alive:
            raise TrainFilesError(f"run {info.name} is still running")
        if info.status == "finished":
            raise TrainFilesError(f"run {info.name} has finished; raise --max_steps in a new run to train further")
        launch = _read_json(folder / LAUNCH_FILE) or {}
        values = dict(launch.get("values") or {})
        if not values:
            raise TrainFilesError(f"run {info.name} was not started by this app ({LAUNCH_FILE} is missing)")
        if max_steps is not None:
            values["max_steps"] = max_steps
        if (folder / "run.json").exists():
            if not info.checkpoints:
                raise TrainFilesError(f"run {info.name} has no checkpoint to resume from; delete it and start again")
            values["resume"] = "latest"
        else:  # refused before it wrote anything: start it again in the same folder
            values.pop("resume", None)
        gpus = check_gpus(launch.get("gpus") or [], gpu_count())  # the same GPUs, if this machine still has them
        return self._launch(folder, values, train_command(values), gpus)

    def stop(self, folder: Path) -> RunInfo:
        """SIGTERM to the run's process group: checkpoint, LoRA, status `stopped` (a second stop
        aborts at once)."""
        info = self.info(folder)
        if not info.alive:
            raise TrainFilesError(f"run {info.name} is not running ({info.status})")
        pid = (_read_json(folder / LAUNCH_FILE) or {}).get("pid")
        os.killpg(pid, signal.SIGTERM)
        return info

    def delete(self, folder: Path) -> str:
        info = self.info(folder)
        if info.alive:
            raise TrainFilesError(f"run {info.name} is running; stop it first")
        shutil.rmtree(folder)
        return info.name

    def _launch(self, folder: Path, values: dict[str, Any], argv: list[str], gpus: list[int]) -> RunInfo:
        argv, gpu_env = launch_plan(argv, values, gpus)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **gpu_env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        command = shown_command(argv, gpu_env)
        with self._lock, open(folder / LOG_FILE, "ab") as log:
            log.write(f"$ {command}\n".encode())
            log.flush()
            process = subprocess.Popen(argv, cwd=str(folder), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            self._processes[str(folder)] = process
        self.lease.take(folder.name, process)
        _write_json(folder / LAUNCH_FILE, {"values": values, "argv": argv, "gpus": gpus, "env": gpu_env,
                                           "command": command, "pid": process.pid, "started": time.time()})
        return self.info(folder)

    # -- reading --

    def alive(self, folder: Path) -> bool:
        """Whether the run's trainer is running: a child of this process, or (after an app restart)
        the process named in launch.json if it still runs the trainer for this folder."""
        process = self._processes.get(str(folder))
        if process is not None:
            if process.poll() is None:
                return True
            launch = _read_json(folder / LAUNCH_FILE) or {}
            if launch.get("pid") == process.pid and "exit_code" not in launch:
                _write_json(folder / LAUNCH_FILE, {**launch, "exit_code": process.returncode})
            return False
        pid = (_read_json(folder / LAUNCH_FILE) or {}).get("pid")
        if not isinstance(pid, int):
            return False
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"ideogram_app.train" in command and str(folder).encode() in command

    def info(self, folder: Path) -> RunInfo:
        folder = Path(folder)
        launch = _read_json(folder / LAUNCH_FILE) or {}
        record = _read_json(folder / "run.json")
        alive = self.alive(folder)
        checkpoints = sorted(p.name for p in (folder / "checkpoints").glob("step-*")) \
            if (folder / "checkpoints").is_dir() else []
        info = RunInfo(folder.name, folder, "starting" if alive else "failed", command=launch.get("command", ""),
                       started=launch.get("started"), checkpoints=checkpoints, alive=alive)
        if record is None:
            if not alive:
                code = (_read_json(folder / LAUNCH_FILE) or {}).get("exit_code")
                info.message = log_errors(folder) or (f"the trainer exited with status {code}" if code is not None
                                                      else "the trainer wrote nothing; see the log")
        else:
            info.status = record.get("status", "failed")
            info.message = record.get("message")
            info.step = int(record.get("step") or 0)
            info.total_steps = record.get("total_steps")
            if info.status == "running" and not alive:
                info.status = "interrupted"
                info.message = ("the trainer process is gone (killed, or the machine restarted); Resume continues "
                                "from the last checkpoint" if checkpoints else "the trainer process is gone")
            if info.status == "failed" and not info.message:
                info.message = log_errors(folder)
        lora = folder / "lora.safetensors"
        info.lora = lora if lora.is_file() else None
        last = self.last_metrics(folder)
        if last:
            info.step = max(info.step, int(last.get("step", 0)))
            info.final_loss = last.get("loss")
        return info

    @staticmethod
    def last_metrics(folder: Path) -> dict | None:
        for line in reversed(tail_bytes(Path(folder) / "metrics.jsonl", 4096).splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
        return None

    def list(self, owner: str) -> list[RunInfo]:
        """Every run folder of `owner`, newest first."""
        root = runs_dir(owner)
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and ((p / LAUNCH_FILE).is_file() or (p / "run.json").is_file())]
        infos = [self.info(p) for p in folders]
        return sorted(infos, key=lambda i: i.started or 0, reverse=True)

    def resolve(self, owner: str, name: Any) -> Path:
        """The folder of `owner`'s run `name` (a name from the client, never a path)."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise TrainFilesError("pick a run from the list first")
        folder = runs_dir(owner) / name
        if not folder.is_dir():
            raise TrainFilesError(f"there is no run {name!r}; pick one from the list")
        return folder

    @staticmethod
    def log_tail(folder: Path, limit: int = LOG_TAIL_BYTES) -> str:
        return tail_bytes(Path(folder) / LOG_FILE, limit)

    @staticmethod
    def validation_images(folder: Path, limit: int = 24) -> list[tuple[str, str]]:
        root = Path(folder) / "validation"
        if not root.is_dir():
            return []
        found = sorted(root.glob("step-*/*.png"))
        return [(str(p), f"{p.parent.name} · {p.stem}") for p in found[-limit:]]


# ----- using a run's LoRA -----------------------------------------------------------------------

def lora_choices(info: RunInfo) -> list[str]:
    """Which LoRAs of a run can be used: FINAL (the run's own file) when written, then every saved
    checkpoint's, newest first."""
    steps = [name for name in reversed(info.checkpoints)
             if (info.folder / "checkpoints" / name / "lora.safetensors").is_file()]
    return ([FINAL] if info.lora is not None else []) + steps


def lora_source(info: RunInfo, choice: str | None) -> tuple[Path, str]:
    """The LoRA file of `choice` (FINAL, a checkpoint name, or None: the final file, else the newest
    checkpoint's) and a file name for it in Generate's folder (`<run>-step<N>`)."""
    choices = lora_choices(info)
    if not choices:
        raise TrainFilesError(f"run {info.name} has no LoRA yet (it is written when the run finishes or stops, "
                              "and with each checkpoint)")
    choice = choice or choices[0]
    if choice not in choices:
        raise TrainFilesError(f"run {info.name} has no LoRA {choice!r}; it has {', '.join(choices)}")
    if choice == FINAL:
        return info.lora, f"{info.name}-step{info.step}"
    return info.folder / "checkpoints" / choice / "lora.safetensors", f"{info.name}-{choice.replace('-', '')}"


def diffusers_export(source: Path, file_name: str, targets: dict[str, tuple[int, int]]) -> Path:
    """`source` (the trainer's ComfyUI-layout file) rewritten in diffusers' layout into a scratch
    file (results.scratch_file: pruned after minutes, Gradio copies it at once); the reader checks it
    against `targets` first, so what is exported is what Generate would load."""
    from ideogram_app.lora.formats import read_lora
    from ideogram_app.lora.write import write_diffusers

    from .results import scratch_file

    lora = read_lora(source, targets)
    steps = lora.metadata.get("steps", "")
    return write_diffusers(scratch_file(f"{file_name}-diffusers.safetensors"), lora.modules,
                           base_model=lora.metadata.get("base_model"), steps=int(steps) if steps.isdigit() else None)


def native_download(source: Path, file_name: str) -> Path:
    """A scratch copy of the run's LoRA file under a name that says which run and step it is."""
    from .results import scratch_file

    target = scratch_file(f"{file_name}.safetensors")
    shutil.copyfile(source, target)
    return target


# ----- memory / time estimate -------------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """One measured training step, from benchmarks/RESULTS.md, "Training on one and two GPUs"
    (2026-11-30; what the memory flags do: docs/training.md, "Memory"): one H200, released DiT, 1024²
    (4096 image tokens), 512 text tokens, batch 1, LoRA rank 32; peak reserved memory, median s/step."""

    fp8: bool
    checkpointing: bool
    offload: bool
    s_per_step: float
    peak_gib: float  # peak reserved


MEASURED = (
    Measured(False, False, False, 0.522, 54.49),
    Measured(False, True, False, 0.724, 21.00),
    Measured(True, True, False, 0.915, 12.63),
    Measured(True, True, True, 0.965, 11.73),
)
MEASURED_PIXELS = 1024 * 1024


def detected_gpu() -> tuple[str, float] | None:
    """(name, total GiB) of the first CUDA device, or None on a machine without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / 2**30


def estimate_line(values: dict[str, Any], gpu: tuple[str, float] | None) -> str:
    """A one-line memory/time estimate for settings `values` on `gpu` (detected_gpu()), from the
    nearest measured configuration; said as measured, not predicted, for other sizes."""
    if gpu is None:
        return "CPU: tiny models only (the released model needs a CUDA GPU)."
    fp8 = "dit" in str(values.get("fp8_models") or "")
    checkpointing = bool(values.get("use_gradient_checkpointing"))
    offload = bool(values.get("use_gradient_checkpointing_offload")) and checkpointing
    candidates = [m for m in MEASURED if m.fp8 == fp8 and m.checkpointing == checkpointing and m.offload == offload]
    name, total = gpu
    if not candidates:
        return (f"{name} ({total:.0f} GiB): no measurement for this combination (an fp8 DiT was measured with "
                "gradient checkpointing only); see docs/training.md.")
    row = candidates[0]
    try:
        steps = int(values.get("max_steps") or 0)
        pixels = int(values.get("max_pixels") or MEASURED_PIXELS)
        batch = int(values.get("batch_size") or 1)
    except (TypeError, ValueError):
        steps, pixels, batch = 0, MEASURED_PIXELS, 1
    fits = "fits" if row.peak_gib < total * 0.95 else "does NOT fit"
    scaled = row.s_per_step * batch * max(pixels, 1) / MEASURED_PIXELS
    line = (f"{name} ({total:.0f} GiB): about {row.peak_gib:.1f} GiB peak — {fits}; {row.s_per_step:.2f} s/step "
            f"(measured at 1024², batch 1, rank 32 on an H200)")
    if steps:
        line += f"; {steps} steps ≈ {_minutes(steps * scaled)} at your size and batch (time scales with pixels)"
    return line + "."


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
