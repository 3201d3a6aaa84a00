"""Answer checking and repair on its own (`repair.finish`): what is mechanical is fixed and reported,
everything else is an error with the verifier's path and message; quoted texts are exact."""
from __future__ import annotations

import json

import pytest

from ideogram_app.caption import verify
from ideogram_app.expand.repair import finish, quoted_texts, repair_bbox


def caption(*elements, **top) -> dict:
    return {"high_level_description": "A poster.", **top,
            "compositional_deconstruction": {"background": "A wall.", "elements": list(elements)}}


@pytest.mark.parametrize("prompt, expected", [
    ('a sign saying "OPEN" and "CLOSED"', ["OPEN", "CLOSED"]),
    ('“Fête d’été” in gold, then "2026".', ["Fête d’été", "2026"]),
    ('a 12" pizza box with "Mario\'s" on it', ["Mario's"]),
    ('"  spaced out  " and "" and "SALE", "SALE"', ["  spaced out  ", "SALE"]),
    ('the word "ONE\nTWO" on two lines', ["ONE\nTWO"]),
    ("no quotes at all, it's fine", []),
])
def test_quoted_texts(prompt, expected):
    assert quoted_texts(prompt) == expected


@pytest.mark.parametrize("bbox, fixed, codes", [
    ([100, 200, 300, 400], [100, 200, 300, 400], []),
    ([300, 400, 100, 200], [100, 200, 300, 400], ["bbox_swapped"]),
    ([-5, 10, 1200, 990], [0, 10, 1000, 990], ["bbox_clamped"]),
    ([0.1, 0.25, 0.5, 0.75], [100, 250, 500, 750], ["bbox_scaled", "bbox_rounded"]),
    ([10.4, 20.6, 30.5, 40.0], [10, 21, 31, 40], ["bbox_rounded"]),
    ([1000, 5, 1000, 9], [999, 5, 1000, 9], ["bbox_widened"]),
    ([7, 7, 7, 7], [7, 7, 8, 8], ["bbox_widened"]),
    ([1, 2, 3], [1, 2, 3], []),
    ([1, 2, "3", 4], [1, 2, "3", 4], []),
    ([True, 2, 3, 4], [True, 2, 3, 4], []),
])
def test_repair_bbox(bbox, fixed, codes):
    repairs = []
    assert repair_bbox(bbox, "b", repairs) == fixed
    assert [r.code for r in repairs] == codes


def test_mechanical_repairs_are_reported_and_the_result_verifies():
    answer = {"caption": caption({"type": "obj", "bbox": [500, 0, 100, 400], "desc": "A cat.",
                                  "color_palette": ["#abc", "ff0000", "#00ff00", "#000000", "#111111", "#222222"]},
                                 {"type": "obj", "bbox": None, "desc": "A dog."},
                                 {"type": "obj", "bbox": None, "desc": "A dog."}, style_description=None)}
    raw = "<think>the user wants a cat</think>\n```json\n" + json.dumps(answer, indent=1) + "\n```"
    done = finish(raw, [], [])
    assert done.errors == [] and verify(done.json) == []
    elements = json.loads(done.json)["compositional_deconstruction"]["elements"]
    assert elements == [{"type": "obj", "bbox": [100, 0, 500, 400], "desc": "A cat.",
                         "color_palette": ["#AABBCC", "#FF0000", "#00FF00", "#000000", "#111111"]},
                        {"type": "obj", "desc": "A dog."}]
    codes = [r.code for r in done.repairs]
    for code in ("unwrapped", "null_removed", "bbox_swapped", "color_expanded", "palette_trimmed",
                 "duplicate_removed", "not_compact"):
        assert code in codes, code
    assert all(str(r).startswith(r.code + " at ") for r in done.repairs)


def test_what_needs_judgement_is_an_error_with_its_path():
    answer = caption({"type": "character", "bbox": [1, 2, 3, 4], "desc": "A hero."},
                     {"type": "obj", "desc": "  "},
                     style_description={"aesthetics": "a", "lighting": "b", "medium": "c", "photo": "d",
                                        "art_style": "e"}, aspect_ratio="16:9")
    done = finish(json.dumps(answer), [], [])
    found = {(i.code, i.path) for i in done.errors}
    assert ("element_type", "compositional_deconstruction.elements[0].type") in found
    assert ("style_kind", "style_description") in found and ("unknown_key", "aspect_ratio") in found
    assert done.caption is None and done.json is None
    assert finish("", [], []).errors[0].message.startswith("the answer is empty")
    assert "prose, not a JSON caption" in finish("A cat on a mat.", [], []).errors[0].message
    assert finish('{"a": 1, "a": 2}', [], []).errors[0].code == "duplicate_key"


def test_quotes_and_kept_elements_are_enforced():
    kept = {"type": "text", "bbox": [10, 10, 90, 990], "text": "HELLO", "desc": "Big."}
    answer = caption({"type": "text", "bbox": [100, 10, 200, 990], "text": "“summer sale”", "desc": "Red."},
                     {"type": "text", "bbox": [10, 10, 90, 990], "text": "hello", "desc": "Changed."})
    done = finish(json.dumps(answer, ensure_ascii=False, separators=(",", ":")), ["Summer Sale", "Only today"], [kept])
    texts = [e.text for e in done.caption.elements]
    assert texts == ["Summer Sale", "HELLO", "Only today"]
    assert done.caption.elements[1].to_dict() == kept
    assert [r.code for r in done.repairs] == ["kept_restored", "quote_restored", "quote_added"]
