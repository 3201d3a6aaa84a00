"""Starter captions shipped in `assets/examples/` (one canonical JSON file each)."""
from __future__ import annotations

from pathlib import Path

from .model import Caption
from .parse import parse

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"


def list_templates() -> list[str]:
    """Template names (file stems), sorted."""
    return sorted(path.stem for path in EXAMPLES_DIR.glob("*.json"))


def load_template(name: str) -> Caption:
    """The template `name` as a `Caption`; unknown names raise KeyError listing the valid ones."""
    path = EXAMPLES_DIR / f"{name}.json"
    if name not in list_templates():
        raise KeyError(f"no template {name!r}; available: {', '.join(list_templates())}")
    caption = parse(path.read_text(encoding="utf-8"))
    if not isinstance(caption, Caption):
        raise ValueError(f"{path} holds plain text, not a JSON caption")
    return caption
