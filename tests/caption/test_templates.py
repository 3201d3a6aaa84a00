"""Shipped examples: the DiffSynth Formula 1 caption and six templates, all canonical and clean."""
import json
from pathlib import Path

import pytest

from ideogram_app.caption import Caption, list_templates, load_template, to_json, verify
from ideogram_app.caption.rules import CODES
from ideogram_app.caption.templates import template_text

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"formula1_diffsynth", "poster_headline", "product_shot", "portrait_photo", "infographic", "logo",
            "app_ui_mock"}


def test_all_required_templates_are_listed():
    assert REQUIRED <= set(list_templates())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_template_files_are_canonical_and_clean(name):
    text = template_text(name)
    assert verify(text) == []
    assert text == to_json(text) + "\n"
    caption = load_template(name)
    assert isinstance(caption, Caption) and caption.elements


def test_formula1_keeps_the_diffsynth_content_with_literal_symbols():
    text = template_text("formula1_diffsynth")
    assert "World Championship™" in text and "© Anadolu Agency via Getty Images" in text and "\\u" not in text
    data = json.loads(text)
    elements = data["compositional_deconstruction"]["elements"]
    assert len(elements) == 17
    assert elements[3] == {"type": "text", "bbox": [657, 0, 755, 142], "text": "F1",
                           "desc": "Large, stylized red logo on a black and purple background in the lower left."}
    assert elements[16]["bbox"] == [968, 8, 997, 332]
    assert elements[4]["text"] == "Formula 1\nWorld Championship™"
    assert data["style_description"]["medium"] == "photograph"


def test_unknown_template_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="poster_headline"):
        load_template("nope")
    with pytest.raises(KeyError, match="no template 'nope'"):
        template_text("nope")


def test_every_json_file_in_the_package_folder_is_a_template():
    folder = ROOT / "ideogram_app" / "caption" / "examples"
    assert list_templates() == sorted(path.stem for path in folder.glob("*.json"))


def test_docs_list_every_verifier_code_with_its_severity():
    docs = (ROOT / "docs" / "caption.md").read_text(encoding="utf-8")
    for code, severity in CODES.items():
        assert f"| `{code}` | {severity} |" in docs
