"""parse: every shape a user may paste, prose as PlainText, broken JSON located by line/column."""
import json

import pytest

from ideogram_app.caption import Caption, CaptionFormatError, CaptionSyntaxError, Element, PlainText, Style, parse
from tests.caption.captions import PHOTO_STYLE, valid


def _check_content(caption):
    assert isinstance(caption, Caption)
    assert caption.high_level_description == "A flat poster with a red circle and a greeting."
    assert caption.style == Style(aesthetics="bold, minimal", lighting="flat", medium="graphic_design",
                                  art_style="flat vector", color_palette=["#112233"])
    assert caption.background == "Plain white."
    assert caption.elements == [
        Element(type="obj", bbox=[100, 100, 500, 500], desc="A red circle.", color_palette=["#FF0000"]),
        Element(type="text", bbox=[600, 100, 700, 900], text="HELLO", desc="Black bold sans-serif."),
    ]


@pytest.mark.parametrize("form", ["dict", "compact", "pretty", "double", "fenced", "padded"])
def test_accepted_forms_give_the_same_caption(form):
    d = valid()
    source = {
        "dict": d,
        "compact": json.dumps(d, separators=(",", ":")),
        "pretty": json.dumps(d, indent=2),
        "double": json.dumps(json.dumps(d)),
        "fenced": "```json\n" + json.dumps(d, indent=1) + "\n```",
        "padded": "\n\n   " + json.dumps(d) + "  \n",
    }[form]
    _check_content(parse(source))


def test_caption_passes_through_and_round_trips_through_dict():
    caption = parse(valid())
    assert parse(caption) is caption
    assert Caption.from_dict(caption.to_dict()) == caption


def test_photo_style_and_missing_optional_parts():
    d = {"style_description": PHOTO_STYLE, "compositional_deconstruction": {"background": "Sea.", "elements": []}}
    caption = parse(d)
    assert caption.high_level_description is None and caption.elements == []
    assert caption.style.photo == "35mm, f/2" and caption.style.art_style is None


@pytest.mark.parametrize("text", ["A cat sleeping on a red sofa, watercolour.", "", "42 balloons over a city",
                                  '"Hello" she said, on a neon sign', "true"])
def test_prose_is_plain_text(text):
    assert parse(text) == PlainText(text)


@pytest.mark.parametrize("text, line, column", [
    ('{"a": 1,}', 1, 9),
    ('{\n  "compositional_deconstruction": {\n    "background": "x"\n    "elements": []\n  }\n}', 4, 5),
    ("  {'single': 'quotes'}", 1, 4),
    ('[1, 2', 1, 6),
    ('{"a": 1} trailing words', 1, 10),
    ('"{\\"a\\": }"', 1, 7),
    ('```json\n{"a": 1,,}\n```', 2, 9),
])
def test_broken_json_raises_with_line_and_column(text, line, column):
    with pytest.raises(CaptionSyntaxError) as info:
        parse(text)
    assert (info.value.line, info.value.column) == (line, column)
    assert f"line {line}, column {column}" in str(info.value)


@pytest.mark.parametrize("data, path", [
    ([1, 2], ""),
    ({"high_level_description": "x"}, "compositional_deconstruction"),
    ({"compositional_deconstruction": {"elements": []}}, "compositional_deconstruction.background"),
    ({"compositional_deconstruction": {"background": "x", "elements": [{"type": "character", "desc": "y"}]}},
     "compositional_deconstruction.elements[0].type"),
    ({"compositional_deconstruction": {"background": "x", "elements": [{"type": "obj", "bbox": [1, 2], "desc": "y"}]}},
     "compositional_deconstruction.elements[0].bbox"),
])
def test_json_that_is_not_a_caption_raises_with_the_path(data, path):
    with pytest.raises(CaptionFormatError) as info:
        parse(json.dumps(data))
    assert path in [i.path for i in info.value.issues]


def test_duplicate_keys_are_refused_instead_of_silently_dropped():
    text = '{"high_level_description":"a","high_level_description":"b","compositional_deconstruction":{"background":"x","elements":[]}}'
    with pytest.raises(CaptionFormatError) as info:
        parse(text)
    assert [(i.code, i.path) for i in info.value.issues] == [("duplicate_key", "high_level_description")]


def test_value_problems_are_kept_for_verify():
    d = valid()
    d["compositional_deconstruction"]["elements"][0]["bbox"] = [900, 0, 100, 2000]
    d["compositional_deconstruction"]["elements"][0]["color_palette"] = ["#ff0000"]
    d["compositional_deconstruction"]["elements"][0]["weight"] = 3
    element = parse(d).elements[0]
    assert element.bbox == [900, 0, 100, 2000] and element.extra == {"weight": 3}
    assert element.color_palette == ["#ff0000"]


def test_other_types_are_a_type_error():
    with pytest.raises(TypeError):
        parse(42)


def test_byte_order_mark_is_ignored():
    _check_content(parse("\ufeff" + json.dumps(valid())))
