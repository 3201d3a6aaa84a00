"""Generation metadata in a PNG text chunk, so a result can be re-opened in the editor later.

One iTXt chunk (UTF-8, so captions keep their non-ASCII text) named `ideogram4` holds a JSON object:
`{"format": 1, "prompt": <the exact string the model saw>, "prompt_kind": "caption"|"text",
"settings": {...}}`. The same JSON travels in `image.info` of the PIL images the pipeline returns.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

METADATA_KEY = "ideogram4"
FORMAT_VERSION = 1


class NoImageMetadataError(ValueError):
    """The image carries no metadata written by this app."""


def make_record(prompt: str, prompt_kind: str, settings: dict) -> dict:
    return {"format": FORMAT_VERSION, "prompt": prompt, "prompt_kind": prompt_kind, "settings": settings}


def attach_metadata(image: Image.Image, record: dict) -> Image.Image:
    """Store `record` on the image (`image.info`), where save_png and read_image_metadata find it."""
    image.info[METADATA_KEY] = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    return image


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as PNG with its attached metadata (if any) in an iTXt chunk.

    The bytes go to a hidden temporary name in the same folder, are flushed to disk, and only then
    renamed onto `path` (atomic on one file system): a process killed mid-write leaves no truncated
    PNG under the final name, only a `.*.tmp` file that no listing picks up.
    """
    path = Path(path)
    info = PngInfo()
    if METADATA_KEY in image.info:
        info.add_itxt(METADATA_KEY, image.info[METADATA_KEY])
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_image_metadata(path_or_image: str | Path | Image.Image) -> dict:
    """The metadata record of an image made by this app; NoImageMetadataError when there is none."""
    if isinstance(path_or_image, Image.Image):
        image, where = path_or_image, "the image"
    else:
        where = str(path_or_image)
        try:
            image = Image.open(path_or_image)
        except FileNotFoundError:
            raise NoImageMetadataError(f"{where} does not exist") from None
        except OSError as err:
            raise NoImageMetadataError(f"{where} is not an image Pillow can read ({err})") from None
    raw = image.info.get(METADATA_KEY)
    if raw is None:
        raise NoImageMetadataError(f"{where} has no Ideogram Layout Studio metadata (no '{METADATA_KEY}' text chunk)")
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise NoImageMetadataError(f"{where} has a damaged '{METADATA_KEY}' chunk: {err}") from None
    if not isinstance(record, dict) or "prompt" not in record or "settings" not in record:
        raise NoImageMetadataError(f"{where} has a '{METADATA_KEY}' chunk without prompt and settings")
    return record
