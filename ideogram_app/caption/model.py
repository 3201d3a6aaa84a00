"""Typed caption model. `to_dict` is the canonical form: official key order per style kind and
element type, upper-case hex; unknown keys survive in `extra` (appended after the known keys) so a
round trip never loses content — `verify` reports them as errors instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .issues import CaptionFormatError
from .rules import (ART_STYLE_KEYS, COMPOSITION_KEYS, ELEMENT_KEYS, PHOTO_STYLE_KEYS, STRUCTURAL_CODES, TEXT_KEYS,
                    TOP_KEYS,
                    check_caption)


def _palette(colors: list[str] | None) -> list[str] | None:
    return None if colors is None else [c.upper() if isinstance(c, str) else c for c in colors]


def _extra(data: dict, known: tuple[str, ...]) -> dict:
    return {k: v for k, v in data.items() if k not in known}


@dataclass
class Style:
    """`style_description`: a photo style has `photo`, any other style has `art_style`."""

    aesthetics: str
    lighting: str
    medium: str
    photo: str | None = None
    art_style: str | None = None
    color_palette: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Style:
        return cls(aesthetics=d["aesthetics"], lighting=d["lighting"], medium=d["medium"], photo=d.get("photo"),
                   art_style=d.get("art_style"), color_palette=d.get("color_palette"),
                   extra=_extra(d, PHOTO_STYLE_KEYS + ("art_style",)))

    def to_dict(self) -> dict:
        order = ART_STYLE_KEYS if self.art_style is not None and self.photo is None else PHOTO_STYLE_KEYS
        values = {"aesthetics": self.aesthetics, "lighting": self.lighting, "medium": self.medium,
                  "photo": self.photo, "art_style": self.art_style, "color_palette": _palette(self.color_palette)}
        out = {k: values[k] for k in order if values[k] is not None}
        if self.art_style is not None and self.photo is not None:  # invalid, but kept (verify reports it)
            out["art_style"] = self.art_style
        return {**out, **self.extra}


@dataclass
class Element:
    """One `obj` or `text` element; `bbox` is [y_min, x_min, y_max, x_max] on the 0-1000 grid."""

    type: Literal["obj", "text"]
    desc: str
    bbox: list[int] | None = None
    text: str | None = None
    color_palette: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Element:
        known = ("type", "bbox", "desc", "color_palette") + (("text",) if d["type"] == "text" else ())
        return cls(type=d["type"], desc=d["desc"], bbox=None if d.get("bbox") is None else list(d["bbox"]),
                   text=d.get("text") if d["type"] == "text" else None, color_palette=d.get("color_palette"),
                   extra=_extra(d, known))

    def to_dict(self) -> dict:
        values = {"type": self.type, "bbox": self.bbox, "text": self.text, "desc": self.desc,
                  "color_palette": _palette(self.color_palette)}
        order = ELEMENT_KEYS.get(self.type, TEXT_KEYS)  # an invalid type is kept for verify to report
        out = {k: values[k] for k in order if values[k] is not None}
        return {**out, **self.extra}


@dataclass
class Caption:
    """A whole structured caption. `extra` keeps unknown top-level keys, `composition_extra`
    unknown keys inside `compositional_deconstruction`."""

    background: str
    elements: list[Element] = field(default_factory=list)
    high_level_description: str | None = None
    style: Style | None = None
    extra: dict = field(default_factory=dict)
    composition_extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> Caption:
        """Build from a parsed caption; raises `CaptionFormatError` (with paths) when the value
        cannot be represented (wrong types, missing required parts). Value problems such as
        lower-case hex or out-of-range boxes are kept for `verify` to report."""
        structural = [i for i in check_caption(d) if i.code in STRUCTURAL_CODES]
        if structural:
            raise CaptionFormatError(structural)
        comp = d["compositional_deconstruction"]
        style = d.get("style_description")
        return cls(background=comp["background"], elements=[Element.from_dict(e) for e in comp["elements"]],
                   high_level_description=d.get("high_level_description"),
                   style=None if style is None else Style.from_dict(style),
                   extra=_extra(d, TOP_KEYS), composition_extra=_extra(comp, COMPOSITION_KEYS))

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        if self.high_level_description is not None:
            out["high_level_description"] = self.high_level_description
        if self.style is not None:
            out["style_description"] = self.style.to_dict()
        out["compositional_deconstruction"] = {"background": self.background,
                                               "elements": [e.to_dict() for e in self.elements],
                                               **self.composition_extra}
        return {**out, **self.extra}


@dataclass
class PlainText:
    """A prompt that is prose, not JSON. The pipeline accepts it as is; the UI can offer upsampling."""

    text: str
