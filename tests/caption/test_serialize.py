"""to_json: the exact training format. Expected strings are written by hand from docs/caption.md, "The format"."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ideogram_app.caption import parse, to_json, verify
from ideogram_app.caption.rules import LITERAL_ESCAPE
from tests.caption.captions import valid


def test_photo_key_order_compact_and_upper_hex():
    d = {"compositional_deconstruction": {"elements": [], "background": "Sea."},
         "style_description": {"medium": "photograph", "color_palette": ["#a0b1c2"], "photo": "50mm",
                               "lighting": "dusk", "aesthetics": "calm"},
         "high_level_description": "A photo."}
    assert to_json(d) == ('{"high_level_description":"A photo.","style_description":{"aesthetics":"calm",'
                          '"lighting":"dusk","photo":"50mm","medium":"photograph","color_palette":["#A0B1C2"]},'
                          '"compositional_deconstruction":{"background":"Sea.","elements":[]}}')


def test_art_style_key_order():
    d = {"style_description": {"art_style": "ink", "medium": "illustration", "lighting": "flat", "aesthetics": "bold"},
         "compositional_deconstruction": {"background": "Paper.", "elements": []}}
    assert to_json(d) == ('{"style_description":{"aesthetics":"bold","lighting":"flat","medium":"illustration",'
                          '"art_style":"ink"},"compositional_deconstruction":{"background":"Paper.","elements":[]}}')


def test_element_key_orders_and_literal_non_ascii():
    d = {"compositional_deconstruction": {"background": "B.", "elements": [
        {"color_palette": ["#ffffff"], "desc": "Logo.", "bbox": [1, 2, 3, 4], "type": "obj"},
        {"desc": "Small.", "text": "Formula 1\nWorld Championship™ ©", "type": "text", "bbox": [5, 6, 7, 8]},
        {"desc": "No box.", "type": "obj"}]}}
    assert to_json(d) == ('{"compositional_deconstruction":{"background":"B.","elements":['
                          '{"type":"obj","bbox":[1,2,3,4],"desc":"Logo.","color_palette":["#FFFFFF"]},'
                          '{"type":"text","bbox":[5,6,7,8],"text":"Formula 1\\nWorld Championship™ ©","desc":"Small."},'
                          '{"type":"obj","desc":"No box."}]}}')


def test_unicode_escapes_in_input_come_out_literal():
    text = json.dumps(valid() | {"high_level_description": "Caf\u00e9 \u00a9"}, ensure_ascii=True)
    assert "\\u00e9" in text
    out = to_json(text)
    assert "Café ©" in out and "\\u" not in out


def test_unknown_keys_are_kept_after_known_ones_and_reported():
    d = valid()
    d["aspect_ratio"] = "16:9"
    d["compositional_deconstruction"]["layout"] = "grid"
    d["compositional_deconstruction"]["elements"][0] = {"z": 1, **d["compositional_deconstruction"]["elements"][0]}
    out = to_json(d)
    assert out.endswith(',"aspect_ratio":"16:9"}')
    assert '"elements":[{"type":"obj","bbox":[100,100,500,500],"desc":"A red circle.","color_palette":["#FF0000"],"z":1}' in out
    assert '],"layout":"grid"}' in out
    assert {(i.code, i.path) for i in verify(out)} == {
        ("unknown_key", "aspect_ratio"), ("unknown_key", "compositional_deconstruction.layout"),
        ("unknown_key", "compositional_deconstruction.elements[0].z")}


def test_lossless_content_round_trip():
    d = valid()
    assert json.loads(to_json(d)) == d
    assert to_json(to_json(d)) == to_json(d)
    assert to_json(parse(to_json(d))) == to_json(d)


def test_prose_is_refused():
    with pytest.raises(ValueError, match="plain text"):
        to_json("a cat on a mat")

words = st.text(min_size=1, max_size=12).filter(lambda s: s.strip() and "#" not in s and not LITERAL_ESCAPE.search(s))
hexes = st.from_regex(r"#[0-9a-fA-F]{6}", fullmatch=True)


@st.composite
def boxes(draw):
    y0, x0 = draw(st.integers(0, 999)), draw(st.integers(0, 999))
    return [y0, x0, draw(st.integers(y0 + 1, 1000)), draw(st.integers(x0 + 1, 1000))]


element = st.one_of(
    st.fixed_dictionaries({"type": st.just("obj")}, optional={"bbox": boxes(), "color_palette": st.lists(hexes, max_size=5)})
    .flatmap(lambda d: st.fixed_dictionaries({"desc": words}).map(lambda e: {**d, **e})),
    st.fixed_dictionaries({"type": st.just("text"), "text": words, "desc": words},
                          optional={"bbox": boxes(), "color_palette": st.lists(hexes, max_size=5)}))
style = st.fixed_dictionaries({"aesthetics": words, "lighting": words, "medium": words},
                              optional={"color_palette": st.lists(hexes, max_size=16)}).flatmap(
    lambda d: st.sampled_from(["photo", "art_style"]).flatmap(lambda k: words.map(lambda v: {**d, k: v})))
captions = st.fixed_dictionaries(
    {"high_level_description": words,
     "compositional_deconstruction": st.fixed_dictionaries(
         {"background": words, "elements": st.lists(element, max_size=4, unique_by=lambda e: json.dumps(e, sort_keys=True))})},
    optional={"style_description": style})


def _upper_hex(value):
    if isinstance(value, dict):
        return {k: _upper_hex(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_upper_hex(v) for v in value]
    return value.upper() if isinstance(value, str) and len(value) == 7 and value.startswith("#") else value


@settings(max_examples=60)
@given(captions)
def test_any_valid_caption_serialises_clean_lossless_and_idempotent(d):
    out = to_json(d)
    assert json.loads(out) == _upper_hex(d)
    assert to_json(out) == out
    assert verify(out) == []
    assert parse(out) == parse(_upper_hex(d))
