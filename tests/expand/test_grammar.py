"""The caption grammar on its own: it accepts canonical captions, refuses every non-canonical or
invalid variant, and random walks through it (any character it allows, any budget it accepts)
always end in a caption that is clean under `verify` and valid against schema.json."""
from __future__ import annotations

import json
import random

import pytest

from ideogram_app.caption import verify
from ideogram_app.caption.schema import schema_errors
from ideogram_app.caption.templates import template_text
from ideogram_app.expand import CaptionBounds
from ideogram_app.expand.grammar import Grammar, caption_grammar, smallest
from ideogram_app.expand.prompts import SYSTEM

WIDE = CaptionBounds(max_elements=16, max_desc_chars=400, max_field_chars=200, max_text_chars=160)


def accepts(grammar: Grammar, text: str) -> bool:
    state = grammar.walk(grammar.start, text)
    return state is not None and grammar.done(state)


def test_accepts_canonical_captions():
    grammar = caption_grammar(WIDE)
    poster = template_text("poster_headline").strip()
    example = SYSTEM.split("Example for a 1024x1024 image:\n", 1)[1]
    for text in (poster, example):
        assert verify(text) == [] and accepts(grammar, text)
    data = json.loads(poster)
    style = data["style_description"]
    photo = {**data, "style_description": {"aesthetics": style["aesthetics"], "lighting": style["lighting"],
                                           "photo": "35mm film", "medium": "photograph"}}
    assert accepts(grammar, json.dumps(photo, ensure_ascii=False, separators=(",", ":")))


@pytest.mark.parametrize("old, new, why", [
    ('[50,80,230,920]', '[230,80,50,920]', "inverted box"),
    ('[50,80,230,920]', '[50,80,50,920]', "empty box"),
    ('[50,80,230,920]', '[50,80,230,1001]', "off the grid"),
    ('[50,80,230,920]', '[050,80,230,920]', "leading zero"),
    ('"#E4572E"', '"#e4572e"', "lower-case hex"),
    ('"high_level_description":"', '"high_level_description": "', "not compact"),
    ('"medium":"graphic_design"', '"medium":"graphic_design","photo":"x"', "photo and art_style"),
    ('Warm cream', 'Warm \\u00e9 cream', "a \\uXXXX escape"),
    ('"desc":"Small orange-red', '"desc":"   ","x":"Small orange-red', "blank value, unknown key"),
    ('"type":"text","bbox":[900', '"type":"obj","bbox":[900', "text on an obj"),
    ('entry","desc":"Small orange', 'entry","canvas":"A4","desc":"Small orange', "unknown key"),
])
def test_refuses_invalid_or_non_canonical_variants(old, new, why):
    poster = template_text("poster_headline").strip()
    assert old in poster
    assert not accepts(caption_grammar(WIDE), poster.replace(old, new, 1)), why


def test_refuses_a_second_identical_element_and_too_many_elements():
    grammar = caption_grammar(CaptionBounds(max_elements=2))
    head = '{"high_level_description":"a","style_description":{"aesthetics":"a","lighting":"a","medium":"a",' \
           '"art_style":"a"},"compositional_deconstruction":{"background":"a","elements":['
    element = '{"type":"obj","bbox":[1,2,3,4],"desc":"a"}'
    other = '{"type":"obj","bbox":[1,2,3,5],"desc":"a"}'
    assert accepts(grammar, head + element + "," + other + "]}}")
    assert not accepts(grammar, head + element + "," + element + "]}}")
    assert grammar.walk(grammar.start, head + element + "," + other + ",") is None


def test_smallest_number_with_a_prefix():
    assert smallest("", 0, 999) == 0 and smallest("", 5, 999, (5, 6)) == 7
    assert smallest("1", 0, 1000) == 1 and smallest("1", 2, 1000) == 10 and smallest("1", 200, 1000) == 1000
    assert smallest("0", 1, 1000) is None and smallest("99", 0, 999, (99,)) == 990 and smallest("7", 800, 1000) is None


def test_random_walks_always_end_in_a_clean_caption():
    bounds = CaptionBounds(max_elements=3, max_desc_chars=10, max_field_chars=6, max_text_chars=6)
    grammar = caption_grammar(bounds)
    alphabet = sorted(grammar.structural_chars() | set('ab XZ"\\né€'))
    rng = random.Random(0)
    shortest = grammar.min_left(grammar.start)
    for trial in range(40):
        budget = shortest + rng.choice([0, 1, 5, 30, 200])
        state, written = grammar.start, []
        while not grammar.done(state):
            options = [(ch, after) for ch in alphabet if (after := grammar.step(state, ch)) is not None
                       and grammar.min_left(after) <= budget - len(written) - 1]
            assert options, "".join(written)
            ch, state = rng.choice(options)
            written.append(ch)
        text = "".join(written)
        assert len(text) <= budget
        assert verify(text) == [] and schema_errors(json.loads(text)) == [], text
