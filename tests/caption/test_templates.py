"""Shipped examples: the DiffSynth Formula 1 caption and six templates, all canonical and clean, each with
the aspect ratio and size it was laid out for."""
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


def test_every_template_carries_its_aspect_and_a_valid_size():
    """The size is a multiple of 16 the model takes without a warning, about 1 MP, and has the named
    ratio (within one 16 px step of rounding)."""
    from ideogram_app.caption.templates import template_format
    from ideogram_app.pipeline.sizes import MULTIPLE, check_size

    for name in list_templates():
        fmt = template_format(name)
        assert check_size(fmt.width, fmt.height) == [], name
        assert 0.85 <= fmt.width * fmt.height / 1024**2 <= 1.1, name
        w, h = (int(part) for part in fmt.aspect.split(":"))
        assert abs(fmt.width * h / w - fmt.height) <= MULTIPLE, (name, fmt)
        assert fmt.title and fmt.orientation in {"square", "portrait", "landscape"}


def test_the_portrait_templates_are_portrait():
    from ideogram_app.caption.templates import template_format

    assert template_format("app_ui_mock").orientation == "portrait"
    assert (template_format("app_ui_mock").width, template_format("app_ui_mock").height) == (768, 1360)
    assert template_format("portrait_photo").orientation == "portrait"
    assert template_format("logo").orientation == "square"


def test_a_template_without_a_format_names_the_table(monkeypatch):
    from ideogram_app.caption import templates

    monkeypatch.delitem(templates.TEMPLATE_FORMATS, "logo")
    with pytest.raises(KeyError, match="no entry in TEMPLATE_FORMATS"):
        templates.template_format("logo")
    with pytest.raises(KeyError, match="no template 'nope'"):
        templates.template_format("nope")
