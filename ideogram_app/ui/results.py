"""Files the app writes and serves, and what it shows about them: result PNGs (which carry their
caption and settings, so they re-open in the editor), their placement overlays, layout previews.

A result record is `{"path", "prompt", "settings"}`: the PNG's own metadata plus where it lies.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from PIL import Image

from ideogram_app.caption import CaptionFormatError, CaptionSyntaxError, PlainText, parse, render_layout
from ideogram_app.pipeline.metadata import read_image_metadata, save_png


def output_dir() -> Path:
    path = Path(os.environ.get("IDEOGRAM_OUTPUT_DIR", "outputs")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_results(images: list[Image.Image], directory: Path | None = None) -> list[dict]:
    """Write each image (with the metadata the pipeline attached) to a fresh, unguessable name;
    -> result records."""
    directory = directory or output_dir()
    results = []
    for image in images:
        path = save_png(image, directory / f"ideogram-{uuid.uuid4().hex[:12]}.png")
        record = read_image_metadata(image)
        results.append({"path": str(path), "prompt": record["prompt"], "settings": record["settings"]})
    return results


def save_preview(image: Image.Image) -> str:
    """Store a layout preview PNG where the app serves files from."""
    path = output_dir() / f"layout-{uuid.uuid4().hex[:12]}.png"
    image.save(path, format="PNG")
    return str(path)


def gallery_items(results: list[dict]) -> list[tuple[str, str]]:
    return [(r["path"], f"seed {r['settings']['seed']} · {r['settings']['preset']} · "
                        f"{r['settings']['width']}×{r['settings']['height']}") for r in results]


def result_details(result: dict) -> dict:
    """What the gallery shows next to a result: its prompt (as JSON when it is a caption) and settings."""
    try:
        prompt = json.loads(result["prompt"])
    except json.JSONDecodeError:
        prompt = result["prompt"]
    return {"prompt": prompt, "settings": result["settings"]}


def overlay_for(result: dict) -> str | None:
    """The caption's boxes drawn over a result (made once, next to the result); None for plain text."""
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
    image = Image.open(path)
    render_layout(caption, image.width, image.height, image=image).save(overlay, format="PNG")
    return str(overlay)
