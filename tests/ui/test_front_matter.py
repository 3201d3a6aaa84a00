"""The Hugging Face Space configuration: the front matter pins the same Gradio as requirements.txt (Spaces
install the `sdk_version`, not the requirement) and sets nothing today's Spaces ignore, and the data folder
(a mounted storage bucket, IDEOGRAM_DATA_DIR) receives results, LoRAs, weights and compiled kernels."""
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


def test_no_front_matter_key_that_spaces_ignore_today():
    """Spaces dropped persistent storage; `suggested_storage` is ignored, so it would only mislead."""
    meta = front_matter(ROOT / "README.md")
    assert "suggested_storage" not in meta
    docs = (ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    assert "IDEOGRAM_DATA_DIR" in docs and not re.search(r"(?<![\w/])/data\b", docs)  # the old persistent disk


DATA_DIR_PROBE = """
import runpy, sys
sys.argv = ["app.py", "--help"]
try:
    runpy.run_path("app.py", run_name="__main__")
except SystemExit:
    pass
import huggingface_hub.constants, os
from ideogram_app.ui.loras import lora_dir
from ideogram_app.ui.results import output_dir
print(output_dir(), lora_dir(), huggingface_hub.constants.HF_HOME, os.environ["TORCHINDUCTOR_CACHE_DIR"], sep="\\n")
"""


def test_the_data_dir_holds_results_loras_weights_and_compiled_kernels(tmp_path):
    """On a Space, IDEOGRAM_DATA_DIR is the mounted storage bucket: everything worth keeping goes there."""
    import os
    import subprocess
    import sys

    bucket = tmp_path / "bucket"
    env = {k: v for k, v in os.environ.items()
           if k not in ("IDEOGRAM_OUTPUT_DIR", "IDEOGRAM_LORA_DIR", "HF_HOME", "TORCHINDUCTOR_CACHE_DIR")}
    run = subprocess.run([sys.executable, "-c", DATA_DIR_PROBE], cwd=ROOT, env={**env, "IDEOGRAM_DATA_DIR": str(bucket)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs, loras, hf_home, compiled = run.stdout.strip().splitlines()[-4:]
    assert (outputs, loras, hf_home, compiled) == (str(bucket / "outputs"), str(bucket / "loras"),
                                                   str(bucket / "huggingface"), str(bucket / "torch-compile"))
