"""The Hugging Face Space front matter pins the same Gradio as requirements.txt (Spaces install the
`sdk_version`, not the requirement)."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def gradio_pin() -> str:
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"gradio(\[[^\]]*\])?==([\w.]+)", line.strip())
        if match:
            return match.group(2)
    raise AssertionError("requirements.txt has no gradio==X.Y.Z pin")


def front_matter(path: Path) -> dict | None:
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return None
    block, sep, _ = text[4:].partition("\n---\n")
    assert sep, f"{path.name}: front matter opened with --- but never closed"
    return yaml.safe_load(block)


def check(meta: dict) -> None:
    assert meta["sdk"] == "gradio"
    assert str(meta["sdk_version"]) == gradio_pin()
    assert meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).exists()
    assert tuple(int(p) for p in str(meta["python_version"]).split(".")) >= (3, 10)


def test_readme_front_matter_configures_the_space():
    meta = front_matter(ROOT / "README.md")
    assert meta is not None, "README.md must start with the Hugging Face Space front matter"
    check(meta)
    assert meta["license"] == "other"  # the weights are non-commercial; the code is licensed apart
