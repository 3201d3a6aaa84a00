import json
import logging

import pytest

from ideogram_app.caption import Caption, CaptionSyntaxError
from ideogram_app.pipeline.prompt import InvalidCaptionError, prepare_prompt

CAPTION = {
    "high_level_description": "A poster",
    "compositional_deconstruction": {
        "background": "plain blue",
        "elements": [{"type": "text", "bbox": [100, 100, 300, 900], "text": "Grüße", "desc": "bold white letters"}],
    },
}
CANONICAL = json.dumps(CAPTION, ensure_ascii=False, separators=(",", ":"))


def test_plain_text_passes_through_unchanged():
    p = prepare_prompt("  a red fox in snow ")
    assert (p.text, p.kind) == ("  a red fox in snow ", "text")


@pytest.mark.parametrize(
    "prompt",
    [CAPTION, Caption.from_dict(CAPTION), json.dumps(CAPTION, indent=2), json.dumps(CAPTION)],
    ids=["dict", "Caption", "pretty JSON", "ascii-escaped JSON"],
)
def test_every_caption_form_becomes_the_same_canonical_string(prompt):
    p = prepare_prompt(prompt)
    assert (p.text, p.kind) == (CANONICAL, "caption")


def test_warnings_are_logged_not_raised(caplog):
    reordered = {"compositional_deconstruction": CAPTION["compositional_deconstruction"],
                 "high_level_description": "A poster"}
    with caplog.at_level(logging.WARNING):
        p = prepare_prompt(reordered)
    assert p.text == CANONICAL
    assert [w.code for w in p.warnings] == ["key_order"]
    assert "key_order" in caplog.text


def test_all_verifier_errors_arrive_in_one_exception():
    bad = {"colour_palette": ["#fff"], "compositional_deconstruction": {"elements": [{"type": "shape", "desc": "x"}]}}
    with pytest.raises(InvalidCaptionError) as info:
        prepare_prompt(bad)
    codes = {(i.code, i.path) for i in info.value.issues}
    assert ("unknown_key", "colour_palette") in codes
    assert ("missing_field", "compositional_deconstruction.background") in codes
    assert ("element_type", "compositional_deconstruction.elements[0].type") in codes
    message = str(info.value)
    assert message.startswith(f"the caption has {len(info.value.issues)} error(s)")
    assert all(issue.path in message for issue in info.value.issues)


def test_broken_json_reports_line_and_column():
    with pytest.raises(CaptionSyntaxError) as info:
        prepare_prompt('{"high_level_description": "x",\n  "compositional_deconstruction": }')
    assert (info.value.line, info.value.column) == (2, 35)


def test_wrong_type_is_rejected():
    with pytest.raises(TypeError, match="prompt must be a str, dict or Caption, got list"):
        prepare_prompt(["a", "b"])


def test_json_text_with_structural_errors_lists_all_of_them():
    with pytest.raises(InvalidCaptionError) as info:
        prepare_prompt('{"bogus": 1, "compositional_deconstruction": {"elements": [{"type": "obj"}]}}')
    assert {i.code for i in info.value.issues} >= {"unknown_key", "missing_field"}
    assert len(info.value.issues) >= 3


def test_prose_the_tokenizer_cannot_take_is_refused_with_the_verifier_message():
    with pytest.raises(InvalidCaptionError, match="lone UTF-16 surrogate"):
        prepare_prompt("a cat \udc80 on a mat")
