"""Starter captions, one canonical JSON file each in `ideogram_app/caption/examples/`, and the image
format each was written for.

The files are package data (declared in pyproject.toml) read through `importlib.resources`, so an
installed wheel has them too: nothing here may assume a source checkout next to the package.

A caption's boxes are fractions of the width and the height (0-1000 on each axis), so the same
caption drawn at another aspect ratio stretches every box: the portrait app mock loaded into a
square canvas squashes its phone screen. That is why each template carries the size it was laid out
for (`TEMPLATE_FORMATS`), and loading one in the app applies it. The format is kept here, not inside
the JSON, because the files are plain captions (what the model reads, byte for byte).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from .model import Caption
from .parse import parse

TEMPLATES = files(__package__) / "examples"


@dataclass(frozen=True)
class TemplateFormat:
    """What a template shows, the aspect ratio its boxes were laid out for, and the ~1 MP size of
    that ratio the app applies (sides are multiples of 16, as the model needs; the test checks that
    the size has the named ratio)."""

    title: str
    aspect: str  # "W:H", as people name it
    width: int
    height: int

    @property
    def orientation(self) -> str:
        return "square" if self.width == self.height else "portrait" if self.height > self.width else "landscape"


# The size each template's boxes were drawn for. formula1_diffsynth: DiffSynth's page gives no size; 16:9
# is what its boxes imply (the "F1" logo box is 142 x 98 grid units, and the real logo's ~2.6:1 shape
# needs a frame about 1.8 times wider than high).
TEMPLATE_FORMATS: dict[str, TemplateFormat] = {
    "app_ui_mock": TemplateFormat("App UI mock (phone)", "9:16", 768, 1360),
    "formula1_diffsynth": TemplateFormat("Formula 1 photo (DiffSynth)", "16:9", 1360, 768),
    "infographic": TemplateFormat("Infographic", "4:3", 1184, 880),
    "logo": TemplateFormat("Logo", "1:1", 1024, 1024),
    "portrait_photo": TemplateFormat("Portrait photo", "3:4", 880, 1184),
    "poster_headline": TemplateFormat("Poster with headline", "2:3", 832, 1248),
    "product_shot": TemplateFormat("Product shot", "1:1", 1024, 1024),
}


def list_templates() -> list[str]:
    """Template names (file stems), sorted."""
    return sorted(entry.name.removesuffix(".json") for entry in TEMPLATES.iterdir() if entry.name.endswith(".json"))


def template_text(name: str) -> str:
    """The file of template `name` exactly as shipped; unknown names raise KeyError listing the valid ones."""
    names = list_templates()
    if name not in names:
        raise KeyError(f"no template {name!r}; available: {', '.join(names)}")
    return (TEMPLATES / f"{name}.json").read_text(encoding="utf-8")


def template_format(name: str) -> TemplateFormat:
    """Title and size of template `name`. A shipped file without an entry in TEMPLATE_FORMATS raises
    KeyError naming the table, so a new template cannot ship without its size."""
    template_text(name)  # unknown names: the same KeyError as everywhere
    if name not in TEMPLATE_FORMATS:
        raise KeyError(f"template {name!r} (ideogram_app/caption/examples/{name}.json) has no entry in "
                       "TEMPLATE_FORMATS (ideogram_app/caption/templates.py): add its title and size there")
    return TEMPLATE_FORMATS[name]


def load_template(name: str) -> Caption:
    """The template `name` as a `Caption`; unknown names raise KeyError listing the valid ones."""
    caption = parse(template_text(name))
    if not isinstance(caption, Caption):
        raise ValueError(f"template {name!r} (ideogram_app/caption/examples/{name}.json) holds plain text, "
                         "not a JSON caption")
    return caption
