"""Hand-picked hostile captions: each value JSON (or Python's json) lets through that once broke the
caption core, with the exact issue it now gets, and the linear-time guarantees on megabyte input
measured against a small input of the same shape (a ratio, so a slow shared machine still passes)."""
import json
import time

import pytest

from ideogram_app.caption import CaptionFormatError, CaptionSyntaxError, PlainText, parse, to_json, verify
from ideogram_app.caption.rules import MAX_REPORTED
from tests.caption.captions import valid

C = "compositional_deconstruction"
E0 = f"{C}.elements[0]"


def _with(path, value):
    d = valid()
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


def _errors(value):
    return {(i.code, i.path) for i in verify(value) if i.severity == "error"}


@pytest.mark.parametrize("kind", [["obj"], {"obj": 1}, [], {}, None, 3, 2.5, True])
def test_an_element_type_of_any_json_type_is_reported_not_raised(kind):
    d = _with([C, "elements", 0, "type"], kind)
    for form in (d, json.dumps(d)):
        assert ("element_type", f"{E0}.type") in _errors(form)
        with pytest.raises(CaptionFormatError, match="element_type"):
            parse(form)
        with pytest.raises(CaptionFormatError):
            to_json(form)


@pytest.mark.parametrize("text, path, words", [
    ("NaN", f"{E0}.bbox[0]", "NaN"),
    ("Infinity", f"{E0}.bbox[0]", "infinity"),
    ("-Infinity", f"{E0}.bbox[0]", "infinity"),
    ("1e400", f"{E0}.bbox[0]", "infinity"),
    ("9" * 5000, f"{E0}.bbox[0]", "infinity"),  # more digits than Python reads: read as too large, not a ValueError
])
def test_numbers_json_cannot_carry_are_wrong_type_at_their_path(text, path, words):
    source = json.dumps(valid(), separators=(",", ":")).replace("[100,100,500,500]", f"[{text},100,500,500]")
    found = [i for i in verify(source) if i.code == "wrong_type"]
    assert [i.path for i in found] == [path] and words in found[0].message
    with pytest.raises(CaptionFormatError, match="wrong_type"):
        parse(source)


def test_non_finite_values_under_unknown_keys_never_reach_the_output():
    """to_json keeps unknown keys; a NaN kept there would make its output invalid JSON."""
    for value in (float("nan"), float("inf"), [1, float("-inf")], 10 ** 5000):
        d = _with(["extra"], value)
        assert ("wrong_type", "extra" if not isinstance(value, list) else "extra[1]") in _errors(d)
        with pytest.raises(CaptionFormatError, match="wrong_type"):
            to_json(d)


def test_lone_surrogates_are_refused_and_reported_printably():
    text = json.dumps(_with([C, "background"], "sky \ud800"))
    assert "\\ud800" in text  # json writes a lone surrogate as an escape, and reads it back
    found = [i for i in verify(text) if i.code == "wrong_type"]
    assert [i.path for i in found] == [f"{C}.background"] and "surrogate" in found[0].message
    with pytest.raises(CaptionFormatError):
        to_json(text)
    key = _with([C, "elements", 0, "\udc00key"], 1)
    issues = verify(key)
    assert ("wrong_type", f"{E0}.\\udc00key") in {(i.code, i.path) for i in issues}
    for item in issues:
        str(item).encode("utf-8")  # the CLI prints these
    prose = verify("a cat \ud800")
    assert {i.code for i in prose} == {"plain_text", "wrong_type"}
    assert isinstance(parse("a cat \ud800"), PlainText)


def test_a_valid_surrogate_pair_is_a_character():
    text = json.dumps(_with([C, "background"], "sky \U0001F600"), separators=(",", ":"))  # as \ud83d\ude00
    assert "\\ud83d\\ude00" in text
    assert {i.code for i in verify(text)} == {"unicode_escape"}
    assert "\U0001F600" in to_json(text)


def test_dicts_built_in_python_with_non_json_content():
    cycle: list = []
    cycle.append(cycle)
    cases = {
        f"{E0}.3": _with([C, "elements", 0, 3], "int key"),
        f"{E0}.[1, 2]": _with([C, "elements", 0, (1, 2)], "tuple key"),
        "extra": _with(["extra"], {1, 2}),
        "extra[0]": _with(["extra"], cycle),
    }
    for path, d in cases.items():
        assert ("wrong_type", path) in _errors(d), verify(d)
        with pytest.raises(CaptionFormatError):
            to_json(d)


def test_deep_nesting_in_a_python_dict_is_refused_by_to_json_not_raised():
    deep: list = []
    for _ in range(20_000):  # far past the recursion limit
        deep = [deep]
    d = _with(["extra"], deep)
    assert ("unknown_key", "extra") in _errors(d)
    with pytest.raises(CaptionFormatError, match="nested too deeply"):
        to_json(d)


def test_deep_nesting_in_text_is_a_syntax_error_or_reported():
    for depth in (900, 100_000):
        text = '{"compositional_deconstruction":{"background":"b","elements":[],"x":' + "[" * depth + "]" * depth + "}}"
        codes = {i.code for i in verify(text)}
        assert codes & {"json_syntax", "unknown_key"}
        try:
            parse(text)
        except CaptionSyntaxError as err:
            assert "nesting too deep" in str(err)


def test_many_problems_are_listed_up_to_a_bound_then_summarised():
    d = _with(["extra"], [float("nan")] * 1000)
    wrong = [i for i in verify(d) if i.code == "wrong_type"]
    assert len(wrong) == MAX_REPORTED + 1
    assert wrong[0].path == "extra[0]" and "980 more" in wrong[-1].message


def test_long_keys_and_values_are_cut_in_paths_and_messages():
    key = "k" * 100_000
    [unknown] = [i for i in verify(_with([key], 1)) if i.code == "unknown_key"]
    assert len(unknown.path) < 100 and len(unknown.message) < 400
    [color] = [i for i in verify(_with([C, "elements", 0, "color_palette"], ["x" * 100_000])) if i.code == "color_format"]
    assert len(color.message) < 300


def _seconds(function, value) -> float:
    start = time.perf_counter()
    try:
        function(value)
    except (CaptionFormatError, CaptionSyntaxError, ValueError):
        pass
    return time.perf_counter() - start


def _long(n: int) -> dict[str, str]:
    """Text shapes of about n characters that once cost quadratic time somewhere in the core."""
    element = json.dumps({"type": "obj", "bbox": [1, 2, 3, 4], "desc": "a box"}, separators=(",", ":"))
    return {
        "long desc": json.dumps(_with([C, "elements", 0, "desc"], "x" * n)),
        "many elements": '{"compositional_deconstruction":{"background":"b","elements":['
                         + ",".join([element] * (n // len(element))) + "]}}",
        "fence then spaces": "```json\n" + " " * n + "x",
        "keys above a wide list": '{"compositional_deconstruction":{"background":"b","elements":[],'
                                  + ('"' + "k" * 79 + '":{') * 300 + '"x":[' + "0," * (n // 2) + "0]" + "}" * 300 + "}}",
        "escapes": json.dumps(_with([C, "background"], "\u00e9" * (n // 6))),
    }


def test_parse_verify_and_to_json_are_linear_in_the_text():
    small, large = _long(50_000), _long(1_000_000)  # 20x the characters
    for shape in small:
        for function in (parse, verify, to_json):
            _seconds(function, small[shape])  # warm caches
            ratio = _seconds(function, large[shape]) / max(_seconds(function, small[shape]), 1e-3)
            assert ratio < 60, f"{function.__name__} on {shape!r}: 20x the text took {ratio:.0f}x the time"
