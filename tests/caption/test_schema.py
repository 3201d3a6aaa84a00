"""schema.json is a valid 2020-12 schema, and it agrees with verify: on the templates (both clean),
on broken variants (both flag), and on random near-captions (with the documented exceptions)."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ideogram_app.caption import list_templates, verify
from ideogram_app.caption.schema import load_schema, schema_errors
from ideogram_app.caption.templates import template_text
from tests.caption.captions import valid
from tests.caption.test_verify import CASES, C

# verify is stricter than JSON Schema can be on these (cross-field or lexical rules).
VERIFY_ONLY = {"key_order", "bbox_order", "bbox_empty", "missing_description"}


def test_schema_is_valid_2020_12():
    Draft202012Validator.check_schema(load_schema())
    assert load_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("name", list_templates())
def test_templates_pass_both(name):
    text = template_text(name)
    assert schema_errors(json.loads(text)) == []
    assert verify(text) == []


@pytest.mark.parametrize("name, fail, code, path, near_miss", CASES, ids=[c[0] for c in CASES])
def test_broken_variants_are_flagged_by_both(name, fail, code, path, near_miss):
    broken = fail(valid())
    assert verify(broken)
    if code in VERIFY_ONLY:
        assert schema_errors(broken) == []  # documents the limit of JSON Schema, see docs/caption.md
    elif name == "bbox floats":
        assert schema_errors(broken) == []  # JSON Schema counts 1.0 as an integer; the model would see "1.0"
    else:
        assert schema_errors(broken), f"schema accepts {name}"
    assert schema_errors(near_miss(valid())) == []


colors = st.sampled_from(["#A1B2C3", "#a1b2c3", "#FFF", "red"])
texts = st.sampled_from(["A thing.", "", "\\u00a9 x", 3])
bboxes = st.sampled_from([[0, 0, 1000, 1000], [10, 20, 30, 40], [1, 2, 3], [0, 0, 1001, 5], "x"])
elements = st.fixed_dictionaries(
    {"type": st.sampled_from(["obj", "text", "bg"])},
    optional={"bbox": bboxes, "text": texts, "desc": texts, "color_palette": st.lists(colors, max_size=6),
              "z": st.just(1)})
styles = st.fixed_dictionaries({}, optional={
    "aesthetics": texts, "lighting": texts, "photo": texts, "medium": texts, "art_style": texts,
    "color_palette": st.lists(colors, max_size=17), "mood": texts})
captions = st.fixed_dictionaries({}, optional={
    "high_level_description": texts, "style_description": styles,
    C: st.fixed_dictionaries({}, optional={"background": texts, "elements": st.lists(elements, max_size=3)}),
    "aspect_ratio": st.just("1x1")})


@settings(max_examples=150)
@given(captions)
def test_schema_and_verify_agree_on_random_near_captions(caption):
    """Without the rules only verify can check, 'schema valid' == 'verify has no errors', except
    that lower-case hex is a schema violation but only a verify warning (to_json fixes it)."""
    issues = verify(caption)
    errors = [i for i in issues if i.severity == "error" and i.code not in VERIFY_ONLY]
    lower_hex = any(i.code == "color_case" for i in issues)
    assert (schema_errors(caption) == []) == (not errors and not lower_hex), (issues, schema_errors(caption))
