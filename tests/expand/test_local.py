"""The local backend with a tiny random-weight causal LM: constrained decoding yields captions that
are valid against schema.json and clean under `verify` by construction, whatever the weights pick."""
from __future__ import annotations

import json
import time

import pytest
import torch

from ideogram_app.caption import parse, to_json, verify
from ideogram_app.caption.schema import schema_errors
from ideogram_app.expand import BackendError, CaptionBounds, describe, expand, make_backend
from ideogram_app.expand.prompts import expand_messages

BOUNDS = CaptionBounds(max_elements=3, max_desc_chars=24, max_field_chars=12, max_text_chars=16)
SUBJECTS = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "a robot watering plants",
            "two cats on a sofa", "a mountain lake at sunrise", "a vintage car", "a city skyline at night",
            "a hot air balloon festival", "a bakery window"]
FRAMES = ["{}", 'a poster of {} with the title "OPEN LATE"', "{}, flat vector illustration",
          "a product shot: {} on marble, label “Café Noir”", 'a book cover, {}, title "Fête d\'été" and "2026"']
SIZES = [(1024, 1024), (1360, 768), (768, 1360), (2048, 512), (640, 1536)]
PROMPTS = [(frame.format(subject), SIZES[(i + j) % len(SIZES)])
           for i, subject in enumerate(SUBJECTS) for j, frame in enumerate(FRAMES)]


@pytest.fixture(scope="module")
def local(tiny_lm):
    return make_backend("local", model=str(tiny_lm), device="cpu", max_new_tokens=110, temperature=1.0, seed=0)


def test_fifty_prompts_give_fifty_valid_captions(local):
    assert len(PROMPTS) == 50
    started = time.monotonic()
    for idea, (width, height) in PROMPTS:
        result = expand(idea, width, height, backend=local, bounds=BOUNDS)
        data = json.loads(result.json)
        assert schema_errors(data) == [], (idea, result.json)
        assert verify(result.json) == [], (idea, result.json)
        assert result.attempts == 1 and result.warnings == ()
        # the raw answer needed no repair at all; only the prompt's quoted texts were added
        assert {repair.code for repair in result.repairs} <= {"quote_added"}, result.repairs
        texts = [e["text"] for e in data["compositional_deconstruction"]["elements"] if e["type"] == "text"]
        for quote in ("OPEN LATE", "Café Noir", "Fête d'été", "2026"):
            assert (quote in texts) == (f'"{quote}"' in idea or f"“{quote}”" in idea), (idea, texts)
        for element in data["compositional_deconstruction"]["elements"]:
            y0, x0, y1, x1 = element["bbox"]
            assert 0 <= y0 < y1 <= 1000 and 0 <= x0 < x1 <= 1000
    print(f"50 local expansions in {time.monotonic() - started:.1f} s")


def test_raw_output_is_canonical_and_finishes_within_any_budget(local):
    """What the model writes is already the canonical text (nothing for to_json to change), and it
    closes within max_new_tokens even at the tightest budget the grammar allows."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from ideogram_app.expand.decoding import CaptionConstraint

    grammar = local.grammar(BOUNDS)
    shortest = grammar.min_left(grammar.start)
    ids = local.prompt_ids(expand_messages("a cat", 1024, 1024, [], [], None))
    for seed, budget in enumerate((shortest, shortest + 1, shortest + 7, shortest + 40, 400)):
        constraint = CaptionConstraint(local.table, grammar, ids.shape[1], budget)
        torch.manual_seed(seed)
        local.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=True,
                             logits_processor=LogitsProcessorList([constraint]),
                             stopping_criteria=StoppingCriteriaList([constraint.finished]),
                             pad_token_id=local.tokenizer.pad_token_id)
        raw = constraint.text()
        assert constraint.done() and len(constraint.tokens[0]) <= budget, (budget, raw)
        assert to_json(parse(raw)) == raw and verify(raw) == [] and schema_errors(json.loads(raw)) == []


def test_kept_elements_come_back_unchanged(local):
    kept = [{"type": "obj", "bbox": [600, 100, 950, 500], "desc": "A green bicycle leaning on the wall."},
            {"type": "text", "bbox": [50, 50, 200, 950], "text": "RIDE\nFAR", "desc": "Tall white letters."}]
    keep = {"high_level_description": "A poster.", "compositional_deconstruction": {"background": "A brick wall.",
                                                                                    "elements": kept}}
    for idea in ("a cycling poster", 'a cycling poster saying "RIDE FAR"'):
        result = expand(idea, 1024, 1536, keep=keep, backend=local, bounds=BOUNDS)
        elements = [e.to_dict() for e in result.caption.elements]
        assert kept[0] in elements and kept[1] in elements
        assert verify(result.json) == []
    assert "RIDE FAR" in [e.text for e in result.caption.elements]  # "RIDE\nFAR" is another text


def test_budget_and_vision_limits_are_clear_errors(tiny_lm, local):
    with pytest.raises(BackendError, match=r"max_new_tokens is 20, but the shortest caption takes \d+ tokens"):
        make_backend("local", model=str(tiny_lm), device="cpu", max_new_tokens=20).complete(
            expand_messages("a cat", 64, 64, [], [], None), BOUNDS)
    with pytest.raises(BackendError, match="reads text only"):
        describe(b"not even read", backend=local)
    with pytest.raises(BackendError, match="no model folder at"):
        make_backend("local", model=str(tiny_lm / "missing"))
