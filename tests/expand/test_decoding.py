"""The token-level decoder against the character-level grammar it is built on: at every state, the
tokens it allows are exactly those whose text the grammar accepts and that leave the caption
finishable in the budget (inside strings, minus escape tokens it does not use)."""
from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from ideogram_app.expand import CaptionBounds
from ideogram_app.expand.decoding import CaptionConstraint, TokenTable
from ideogram_app.expand.grammar import caption_grammar

BOUNDS = CaptionBounds(max_elements=3, max_desc_chars=10, max_field_chars=6, max_text_chars=8)


@pytest.fixture(scope="module")
def table(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    return TokenTable(tokenizer, len(tokenizer))


def reference(constraint, state, left) -> set[int]:
    """Every token whose text the grammar accepts from `state`, leaving at most `left - 1` to finish."""
    grammar, table = constraint.grammar, constraint.table
    found = set()
    for token_id, text in enumerate(table.texts):
        after = None if text is None else grammar.walk(state, text)
        if after is not None and grammar.min_left(after) <= left - 1:
            found.add(token_id)
    return found


def test_allowed_tokens_match_the_grammar(table):
    grammar = caption_grammar(BOUNDS).spell_with(table.suffix_costs)
    rng = random.Random(0)
    checked = {"forced": 0, "string": 0, "other": 0}
    for trial in range(12):
        budget = grammar.min_left(grammar.start) + rng.choice([0, 3, 20, 80])
        constraint = CaptionConstraint(table, grammar, 0, budget)
        state, used = grammar.start, 0
        while not grammar.done(state):
            left = budget - used
            allowed = set(constraint.allowed(state, left).tolist())
            expected = reference(constraint, state, left)
            assert allowed and allowed <= expected, (constraint.text(), allowed - expected)
            if grammar.forced(state) is not None:
                assert len(allowed) == 1
                checked["forced"] += 1
            elif grammar.open_string(state) is not None:
                unused = [table.texts[i] for i in expected - allowed]
                assert all("\\" in text for text in unused), unused
                checked["string"] += 1
            else:
                assert allowed == expected
                checked["other"] += 1
            token_id = rng.choice(sorted(allowed))
            state = grammar.walk(state, table.texts[token_id])
            used += 1
        assert used <= budget
    assert min(checked.values()) > 20, checked


def test_tokenizer_without_single_character_tokens_is_refused(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    comma = tokenizer.convert_tokens_to_ids(",")

    class NoComma:
        """The tiny tokenizer with its ',' token unusable (decoded as an added special token)."""

        def __getattr__(self, name):
            return getattr(tokenizer, name)

        all_special_ids = tokenizer.all_special_ids + [comma]

        def __len__(self):
            return len(tokenizer)

    with pytest.raises(ValueError, match="the tokenizer has no token for ','"):
        TokenTable(NoComma(), len(tokenizer))
