"""Files the app writes and serves, and what it shows about them: result PNGs (which carry their
caption and settings, so they re-open in the editor), their placement overlays, layout previews and
exported captions.

Results are kept: each user's PNGs lie in their own folder under the output folder, and the gallery
is a listing of that folder, so a reload or a server restart shows earlier results again. Who a
user is: the login name under `--auth` (`user-<name>`); otherwise a random id that the browser
keeps (`browser-<id>`); `/generate` without a login writes to `api/`. Every PNG is written to a
temporary name and renamed (`save_png`), so a killed server leaves no truncated `ideogram-*.png`.

Previews and exports are temporary: they go to a scratch folder in the system temp directory,
from where Gradio copies what a handler returns into its cache (which the app's `delete_cache`
empties); scratch files older than `SCRATCH_TTL_S` are deleted whenever a new one is made.

A result record is `{"path", "prompt", "settings"}`: the PNG's own metadata plus where it lies
(`settings["loras"]` lists the LoRAs it was made with: file, sha256, scale, target).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

from ideogram_app.caption import CaptionFormatError, CaptionSyntaxError, PlainText, parse, render_layout
from ideogram_app.pipeline.metadata import NoImageMetadataError, read_image_metadata, save_png

RESULT_NAME = re.compile(r"ideogram-[0-9a-f]{12}\.png")
BROWSER_ID = re.compile(r"[0-9a-f]{32}")
SAFE_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
API_FOLDER = "api"
GALLERY_LIMIT = 100  # newest results shown per user; older ones stay on disk
SCRATCH_TTL_S = 15 * 60  # Gradio copies a returned file at once; minutes are plenty


def output_dir() -> Path:
    path = Path(os.environ.get("IDEOGRAM_OUTPUT_DIR", "outputs")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_browser_id() -> str:
    return uuid.uuid4().hex


def is_browser_id(value: object) -> bool:
    return isinstance(value, str) and BROWSER_ID.fullmatch(value) is not None


def owner_folder(username: str | None, browser_id: object = None) -> str:
    """The folder name of one user's results: `user-<login>` (a login with characters that are not
    safe in a file name is hashed), else `browser-<id>` for a well-formed browser id; ValueError
    for neither (the id comes from the client and is never trusted as a path)."""
    if username:
        if SAFE_USER_NAME.fullmatch(username):
            return f"user-{username}"
        return "user-" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    if is_browser_id(browser_id):
        return f"browser-{browser_id}"
    raise ValueError("this page has no browser id yet; reload the page")


def results_dir(folder: str) -> Path:
    path = output_dir() / folder
    path.mkdir(exist_ok=True)
    return path


def save_results(images: list[Image.Image], directory: Path) -> list[dict]:
    """Write each image (with the metadata the pipeline attached) to a fresh, unguessable name;
    -> result records."""
    results = []
    for image in images:
        path = save_png(image, directory / f"ideogram-{uuid.uuid4().hex[:12]}.png")
        record = read_image_metadata(image)
        results.append({"path": str(path), "prompt": record["prompt"], "settings": record["settings"]})
    return results


def list_results(directory: Path, limit: int = GALLERY_LIMIT) -> list[dict]:
    """The newest `limit` results in `directory`, oldest first (the order they were made in). Files
    without this app's metadata are skipped; temporary and overlay files never match the name."""
    if not directory.is_dir():
        return []
    found = []
    for entry in os.scandir(directory):
        if RESULT_NAME.fullmatch(entry.name) and entry.is_file():
            found.append((entry.stat().st_mtime_ns, entry.name, entry.path))
    records = []
    for _, _, path in sorted(found)[-limit:]:
        try:
            record = read_image_metadata(path)
        except (NoImageMetadataError, Image.DecompressionBombError):
            continue
        records.append({"path": path, "prompt": record["prompt"], "settings": record["settings"]})
    return records


def scratch_file(name: str) -> Path:
    """A path `<scratch>/<fresh folder>/name` for a temporary download (see the module docstring);
    the file keeps its plain name (`caption.json`) for the user's download."""
    scratch = Path(tempfile.gettempdir()) / "ideogram-layout-studio"
    scratch.mkdir(exist_ok=True)
    cutoff = time.time() - SCRATCH_TTL_S
    for entry in os.scandir(scratch):
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
        except FileNotFoundError:  # another request pruned it first
            pass
    folder = scratch / uuid.uuid4().hex
    folder.mkdir()
    return folder / name


def save_preview(image: Image.Image) -> str:
    """Store a layout preview PNG where it is served from until Gradio has copied it."""
    return str(save_png(image, scratch_file("layout.png")))


def gallery_items(results: list[dict]) -> list[tuple[str, str]]:
    return [(r["path"], f"seed {r['settings'].get('seed')} · {r['settings'].get('preset')} · "
                        f"{r['settings'].get('width')}×{r['settings'].get('height')}"
                        + (f" · {describe_loras(r['settings']['loras'])}" if r["settings"].get("loras") else ""))
            for r in results]


def describe_loras(loras: object) -> str:
    """A result's LoRAs (its metadata's `settings["loras"]`, each with file and scale) in a few
    words for a status line or caption: "ink.safetensors ×0.8, style.safetensors ×0.5"."""
    if not isinstance(loras, list) or not loras:
        return "no LoRA"
    def one(row: object) -> str:
        if not isinstance(row, dict):
            return "?"
        scale = row.get("scale")
        return f"{row.get('file', '?')} ×" + (f"{scale:g}" if isinstance(scale, (int, float)) else "?")
    return ", ".join(one(row) for row in loras)


def result_details(result: dict) -> dict:
    """What the gallery shows next to a result: its prompt (as JSON when it is a caption), its LoRAs
    one line each (the JSON viewer folds the settings' nested LoRA records) and its settings."""
    try:
        prompt = json.loads(result["prompt"])
    except (json.JSONDecodeError, TypeError):
        prompt = result["prompt"]
    loras = result["settings"].get("loras")
    if not loras:
        return {"prompt": prompt, "settings": result["settings"]}
    lines = [f"{describe_loras([row])}, sha256 {row.get('sha256')}" if isinstance(row, dict) else "?" for row in loras]
    return {"prompt": prompt, "loras": lines, "settings": result["settings"]}


def overlay_for(result: dict) -> str | None:
    """The caption's boxes drawn over a result (made once, next to the result, written atomically);
    None for plain text."""
    path = Path(result["path"])
    overlay = path.with_name(path.stem + "-overlay.png")
    if overlay.exists():
        return str(overlay)
    try:
        caption = parse(result["prompt"])
    except (CaptionSyntaxError, CaptionFormatError):
        return None
    if isinstance(caption, PlainText):
        return None
    with Image.open(path) as image:
        image.load()
        drawn = render_layout(caption, image.width, image.height, image=image)
    return str(save_png(drawn, overlay))
