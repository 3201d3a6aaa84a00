"""How large a generated caption may get. Both backends read the same bounds: the local decoder
builds them into its grammar (so generation always ends), the OpenAI-compatible backend into the
JSON schema it sends. The palette limits are not here: they are caption rules (`rules.py`)."""
from __future__ import annotations

from dataclasses import dataclass

from ideogram_app.caption.rules import BBOX_GRID


@dataclass(frozen=True)
class CaptionBounds:
    max_elements: int = 16  # a busy infographic; more boxes than this are rarely drawn well
    max_desc_chars: int = 400  # high_level_description, background and element desc
    max_field_chars: int = 200  # aesthetics, lighting, photo, medium, art_style
    max_text_chars: int = 160  # one text element's literal text

    def __post_init__(self) -> None:
        for name in ("max_elements", "max_desc_chars", "max_field_chars", "max_text_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CaptionBounds.{name} must be a positive integer, got {value!r}")
        if self.max_elements >= BBOX_GRID // 2:
            raise ValueError(f"CaptionBounds.max_elements must be below {BBOX_GRID // 2}, got {self.max_elements}")
