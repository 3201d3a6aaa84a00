"""Starter captions, one canonical JSON file each in `ideogram_app/caption/examples/`.

They are package data (declared in pyproject.toml) read through `importlib.resources`, so an installed
wheel has them too: nothing here may assume a source checkout next to the package.
"""
from __future__ import annotations

from importlib.resources import files

from .model import Caption
from .parse import parse

TEMPLATES = files(__package__) / "examples"


def list_templates() -> list[str]:
    """Template names (file stems), sorted."""
    return sorted(entry.name.removesuffix(".json") for entry in TEMPLATES.iterdir() if entry.name.endswith(".json"))


def template_text(name: str) -> str:
    """The file of template `name` exactly as shipped; unknown names raise KeyError listing the valid ones."""
    names = list_templates()
    if name not in names:
        raise KeyError(f"no template {name!r}; available: {', '.join(names)}")
    return (TEMPLATES / f"{name}.json").read_text(encoding="utf-8")


def load_template(name: str) -> Caption:
    """The template `name` as a `Caption`; unknown names raise KeyError listing the valid ones."""
    caption = parse(template_text(name))
    if not isinstance(caption, Caption):
        raise ValueError(f"template {name!r} (ideogram_app/caption/examples/{name}.json) holds plain text, "
                         "not a JSON caption")
    return caption
