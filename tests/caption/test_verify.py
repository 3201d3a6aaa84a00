"""verify: each rule has a failing case (code, path, severity) and a passing near-miss; random
input never raises; what to_json repairs is a warning, and to_json really repairs it."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ideogram_app.caption import Caption, parse, to_json, verify
from ideogram_app.caption.rules import CODES
from tests.caption.captions import PHOTO_STYLE, valid

C = "compositional_deconstruction"
E0, E1 = f"{C}.elements[0]", f"{C}.elements[1]"


def _els(d):
    return d[C]["elements"]


def _set(path_keys, value):
    def mutate(d):
        target = d
        for key in path_keys[:-1]:
            target = target[key]
        target[path_keys[-1]] = value
        return d
    return mutate


def _drop(*path_keys):
    def mutate(d):
        target = d
        for key in path_keys[:-1]:
            target = target[key]
        del target[path_keys[-1]]
        return d
    return mutate


def _text(make):
    """Mutations that need raw text: `make(d)` returns the text to verify."""
    return make


# (id, failing input maker, code, path, passing near-miss maker)
CASES = [
    ("unknown top key", _set(["aspect_ratio"], "1x1"), "unknown_key", "aspect_ratio", lambda d: d),
    ("unknown style key", _set(["style_description", "colour_palette"], ["#FFFFFF"]), "unknown_key",
     "style_description.colour_palette", _set(["style_description", "color_palette"], ["#FFFFFF"])),
    ("text on obj", _set([C, "elements", 0, "text"], "HI"), "unknown_key", f"{E0}.text",
     _set([C, "elements", 1, "text"], "HI")),
    ("unknown composition key", _set([C, "canvas"], "A4"), "unknown_key", f"{C}.canvas", lambda d: d),
    ("top order", lambda d: {C: d[C], **{k: v for k, v in d.items() if k != C}}, "key_order", "", lambda d: d),
    ("photo order", _set(["style_description"], {"aesthetics": "a", "photo": "p", "lighting": "l", "medium": "photograph"}),
     "key_order", "style_description", _set(["style_description"], dict(PHOTO_STYLE))),
    ("art order", _set(["style_description"], {"aesthetics": "a", "lighting": "l", "art_style": "s", "medium": "m"}),
     "key_order", "style_description", _set(["style_description"], {"aesthetics": "a", "lighting": "l", "medium": "m", "art_style": "s"})),
    ("text element order", _set([C, "elements", 1], {"type": "text", "bbox": [1, 1, 9, 9], "desc": "d", "text": "t"}),
     "key_order", E1, _set([C, "elements", 1], {"type": "text", "bbox": [1, 1, 9, 9], "text": "t", "desc": "d"})),
    ("no composition", _drop(C), "missing_field", C, lambda d: d),
    ("no background", _drop(C, "background"), "missing_field", f"{C}.background", _set([C, "background"], "x")),
    ("no elements", _drop(C, "elements"), "missing_field", f"{C}.elements", _set([C, "elements"], [])),
    ("no desc", _drop(C, "elements", 0, "desc"), "missing_field", f"{E0}.desc", lambda d: d),
    ("no medium", _drop("style_description", "medium"), "missing_field", "style_description.medium", lambda d: d),
    ("no type", _drop(C, "elements", 0, "type"), "missing_field", f"{E0}.type", lambda d: d),
    ("text without text", _drop(C, "elements", 1, "text"), "missing_field", f"{E1}.text",
     _drop(C, "elements", 0, "bbox")),
    ("both photo and art", _set(["style_description", "photo"], "35mm"), "style_kind", "style_description",
     _set(["style_description"], dict(PHOTO_STYLE))),
    ("neither photo nor art", _drop("style_description", "art_style"), "style_kind", "style_description",
     lambda d: d),
    ("invented type", _set([C, "elements", 0, "type"], "character"), "element_type", f"{E0}.type", lambda d: d),
    ("bbox three values", _set([C, "elements", 0, "bbox"], [1, 2, 3]), "bbox_shape", f"{E0}.bbox",
     _set([C, "elements", 0, "bbox"], [1, 2, 3, 4])),
    ("bbox floats", _set([C, "elements", 0, "bbox"], [1.0, 2, 3, 4]), "bbox_shape", f"{E0}.bbox", lambda d: d),
    ("bbox as string", _set([C, "elements", 0, "bbox"], "1,2,3,4"), "bbox_shape", f"{E0}.bbox", lambda d: d),
    ("bbox booleans", _set([C, "elements", 0, "bbox"], [True, 0, 1, 1]), "bbox_shape", f"{E0}.bbox", lambda d: d),
    ("bbox over 1000", _set([C, "elements", 0, "bbox"], [0, 0, 1001, 500]), "bbox_range", f"{E0}.bbox",
     _set([C, "elements", 0, "bbox"], [0, 0, 1000, 1000])),
    ("bbox negative", _set([C, "elements", 0, "bbox"], [-1, 0, 10, 10]), "bbox_range", f"{E0}.bbox",
     _set([C, "elements", 0, "bbox"], [0, 0, 10, 10])),
    ("bbox min > max", _set([C, "elements", 0, "bbox"], [500, 100, 100, 500]), "bbox_order", f"{E0}.bbox",
     _set([C, "elements", 0, "bbox"], [100, 100, 500, 500])),
    ("bbox zero area", _set([C, "elements", 0, "bbox"], [100, 100, 100, 500]), "bbox_empty", f"{E0}.bbox",
     _set([C, "elements", 0, "bbox"], [100, 100, 101, 500])),
    ("style palette 17", _set(["style_description", "color_palette"], ["#000000"] * 17), "palette_length",
     "style_description.color_palette", _set(["style_description", "color_palette"], ["#000000"] * 16)),
    ("element palette 6", _set([C, "elements", 0, "color_palette"], ["#000000"] * 6), "palette_length",
     f"{E0}.color_palette", _set([C, "elements", 0, "color_palette"], ["#000000"] * 5)),
    ("short hex", _set([C, "elements", 0, "color_palette"], ["#FFF"]), "color_format", f"{E0}.color_palette[0]",
     _set([C, "elements", 0, "color_palette"], ["#FFFFFF"])),
    ("colour name", _set(["style_description", "color_palette"], ["#112233", "red"]), "color_format",
     "style_description.color_palette[1]", lambda d: d),
    ("not hex", _set([C, "elements", 0, "color_palette"], ["#GG0000"]), "color_format", f"{E0}.color_palette[0]",
     lambda d: d),
    ("lower-case hex", _set([C, "elements", 0, "color_palette"], ["#ff00aa"]), "color_case", f"{E0}.color_palette[0]",
     _set([C, "elements", 0, "color_palette"], ["#FF00AA"])),
    ("empty desc", _set([C, "elements", 0, "desc"], "   "), "empty_text", f"{E0}.desc", _set([C, "elements", 0, "desc"], ".")),
    ("empty background", _set([C, "background"], ""), "empty_text", f"{C}.background", lambda d: d),
    ("empty text", _set([C, "elements", 1, "text"], ""), "empty_text", f"{E1}.text", _set([C, "elements", 1, "text"], "A")),
    ("empty high level", _set(["high_level_description"], ""), "empty_text", "high_level_description", lambda d: d),
    ("literal escape", _set([C, "elements", 1, "text"], "\\u00a9 2024"), "literal_escape", f"{E1}.text",
     _set([C, "elements", 1, "text"], "\u00a9 2024")),
    ("duplicate element", lambda d: _set([C, "elements"], _els(d) + [dict(_els(d)[0])])(d), "duplicate_element",
     f"{C}.elements[2]", lambda d: _set([C, "elements"], _els(d) + [{**_els(d)[0], "bbox": [1, 1, 50, 50]}])(d)),
    ("no high level", _drop("high_level_description"), "missing_description", "high_level_description", lambda d: d),
    ("elements not a list", _set([C, "elements"], {"type": "obj"}), "wrong_type", f"{C}.elements", lambda d: d),
    ("background number", _set([C, "background"], 5), "wrong_type", f"{C}.background", lambda d: d),
    ("style as string", _set(["style_description"], "photo"), "wrong_type", "style_description", lambda d: d),
    ("element as string", _set([C, "elements", 0], "a red circle"), "wrong_type", E0, lambda d: d),
    ("palette as string", _set([C, "elements", 0, "color_palette"], "#FFFFFF"), "wrong_type",
     f"{E0}.color_palette", lambda d: d),
]

# Rules that only exist for text: (id, failing text maker, code, path, passing text maker).
def _compact(d):
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


TEXT_CASES = [
    ("json syntax", lambda d: json.dumps(d)[:-1] + ",}", "json_syntax", "", _compact),
    ("not an object", lambda d: json.dumps([d]), "not_an_object", "", _compact),
    ("duplicate key", lambda d: '{"high_level_description":"a",' + json.dumps(d, separators=(",", ":"))[1:],
     "duplicate_key", "high_level_description", lambda d: json.dumps(d, separators=(",", ":"))),
    ("escaped non-ASCII", lambda d: json.dumps(_set([C, "elements", 1, "text"], "Caf\u00e9")(d), separators=(",", ":")),
     "unicode_escape", f"{E1}.text",
     lambda d: json.dumps(_set([C, "elements", 1, "text"], "Caf\u00e9")(d), separators=(",", ":"), ensure_ascii=False)),
    ("pretty printed", lambda d: json.dumps(d, indent=2), "not_compact", "",
     lambda d: json.dumps(d, separators=(",", ":"))),
    ("double encoded", lambda d: json.dumps(json.dumps(d, separators=(",", ":"))), "double_encoded", "",
     lambda d: json.dumps(d, separators=(",", ":"))),
    ("prose", lambda d: "A red circle above the word HELLO.", "plain_text", "", lambda d: json.dumps(d, separators=(",", ":"))),
]


def _pairs(issues):
    return {(i.code, i.path) for i in issues}


@pytest.mark.parametrize("name, fail, code, path, near_miss", CASES, ids=[c[0] for c in CASES])
def test_rule_on_dict(name, fail, code, path, near_miss):
    found = verify(fail(valid()))
    assert (code, path) in _pairs(found), found
    assert all(i.severity == CODES[i.code] for i in found)
    assert all(i.message for i in found)
    assert code not in {i.code for i in verify(near_miss(valid()))}


@pytest.mark.parametrize("name, fail, code, path, near_miss", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_rule_on_text(name, fail, code, path, near_miss):
    found = verify(fail(valid()))
    assert (code, path) in _pairs(found), found
    assert verify(near_miss(valid())) == []


def test_every_code_has_a_failing_case():
    assert {c[2] for c in CASES + TEXT_CASES} == set(CODES)


def test_valid_caption_is_clean_in_every_input_form():
    d = valid()
    assert verify(d) == verify(json.dumps(d, separators=(",", ":"), ensure_ascii=False)) == verify(parse(d)) == []


def test_syntax_error_message_names_line_and_column():
    [found] = verify('{\n  "compositional_deconstruction": {\n    "background": "x",\n  }\n}')
    assert "line 4, column 3" in found.message and found.severity == "error"


def test_messages_say_how_to_fix():
    d = _set([C, "elements", 0, "bbox"], [500, 100, 100, 500])(valid())
    [found] = verify(d)
    assert "[y_min, x_min, y_max, x_max]" in found.message and "swap" in found.message
    d = _set([C, "elements", 0, "color_palette"], ["#ff00aa"])(valid())
    [found] = verify(d)
    assert "'#FF00AA'" in found.message


AUTO_FIXED = ["key_order", "color_case", "unicode_escape", "not_compact", "double_encoded"]


@pytest.mark.parametrize("name, fail, code, path, near_miss",
                         [c for c in CASES + TEXT_CASES if c[2] in AUTO_FIXED],
                         ids=[c[0] for c in CASES + TEXT_CASES if c[2] in AUTO_FIXED])
def test_what_to_json_fixes_is_a_warning_and_is_fixed(name, fail, code, path, near_miss):
    broken = fail(valid())
    assert CODES[code] == "warning"
    assert verify(to_json(broken)) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2000, 2000) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20)

known_keys = st.sampled_from(["high_level_description", "style_description", C, "background", "elements", "type",
                              "bbox", "desc", "text", "color_palette", "photo", "art_style", "medium", "lighting",
                              "aesthetics", "obj"])
caption_like = st.recursive(
    st.sampled_from([None, "", "obj", "text", "#fff", "#ABCDEF", 5, 1000, 1001, -1, 2.5, True]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(known_keys, children, max_size=6),
    max_leaves=30)


@settings(max_examples=80)
@given(st.one_of(json_values, caption_like))
def test_random_values_never_raise(value):
    for form in (value, json.dumps(value), json.dumps(value, indent=1, ensure_ascii=True)):
        assert all(i.severity in ("error", "warning") for i in verify(form))


@settings(max_examples=80)
@given(st.text(max_size=40) | st.text(alphabet='{}[]":,\\u0 a1\n', max_size=40))
def test_random_text_never_raises(text):
    verify(text)


def test_deep_nesting_never_raises():
    assert verify("[" * 100000)[0].code == "json_syntax"
    assert verify("[" * 5000 + "]" * 5000)


def test_caption_object_is_verified_from_its_canonical_form():
    caption = parse(_set([C, "elements", 0, "bbox"], [0, 0, 2000, 10])(valid()))
    assert isinstance(caption, Caption)
    assert _pairs(verify(caption)) == {("bbox_range", f"{E0}.bbox")}
