"""`pip install` the project into a fresh virtual environment and use the installed copy; and the README's
two install commands in either order, which must leave an installed torch build alone.

Guards the package data: the templates, the caption schema and the canvas files must ship inside the
wheel, because `ideogram_app` reads them next to its modules (never from a source checkout). The
sources are copied to a temporary folder first so the in-tree build leaves no `build/` or `*.egg-info`
in the checkout; the check runs with `python -I` from another folder, so neither the checkout nor the
current directory is on `sys.path` and only the installed copy can be imported.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import json
from pathlib import Path

import ideogram_app
from ideogram_app.caption import verify
from ideogram_app.caption.schema import load_schema
from ideogram_app.caption.templates import list_templates, load_template, template_text

package = Path(ideogram_app.__file__).parent
print(json.dumps({
    "package": str(package),
    "templates": list_templates(),
    "elements": {name: len(load_template(name).elements) for name in list_templates()},
    "issues": {name: [issue.code for issue in verify(template_text(name))] for name in list_templates()},
    "schema_title": load_schema()["title"],
    "ui_files": sorted(p.name for p in (package / "ui").iterdir() if p.suffix in (".css", ".js")),
}))
"""


def test_installed_wheel_ships_and_loads_every_template(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "ideogram_app", source / "ideogram_app",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyi"))

    venv = tmp_path / "venv"
    # No pip of its own: the venv runs the suite's pip and setuptools (requirements-dev.txt) from the system
    # site-packages, which install into the venv. ensurepip's bundled setuptools varies per Python version
    # and some cannot build a wheel without the `wheel` package.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PIP_"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              str(source)], capture_output=True, text=True, env=env, timeout=180)
    assert install.returncode == 0, install.stdout + install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", CHECK], cwd=elsewhere, capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)

    installed = Path(found["package"])
    assert installed.is_relative_to(venv) and not installed.is_relative_to(ROOT), installed
    expected = sorted(path.stem for path in (ROOT / "ideogram_app" / "caption" / "examples").glob("*.json"))
    assert len(expected) >= 7 and found["templates"] == expected
    assert all(count > 0 for count in found["elements"].values()), found["elements"]
    assert found["issues"] == {name: [] for name in expected}
    assert found["schema_title"] == "Ideogram 4 structured caption"
    ui_files = sorted(p.name for p in (ROOT / "ideogram_app" / "ui").iterdir() if p.suffix in (".css", ".js"))
    assert found["ui_files"] == ui_files


# --- the README's two commands, in either order --------------------------------------------------------

# What a GPU machine has: a CUDA build of torch that is not the 2.13.0 CI uses. Only its distribution record
# is written (the real wheel is GBs; the import still finds this machine's torch): pip decides what to
# install from the records, so a requirement file that would replace the build is caught all the same.
GPU_TORCH = "2.14.0+cu128"
README_COMMANDS = {
    "app": "pip install -r requirements.txt && python app.py",
    "tests": "pip install -r requirements-dev.txt && python -m pytest",
}


def readme_install_commands() -> dict[str, str]:
    """The requirement file of each Quick start command, read from README.md (so the test follows it)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = {}
    for name, command in README_COMMANDS.items():
        assert command in readme, f"README.md no longer shows the {name} command {command!r}"
        found[name] = re.match(r"pip install -r (\S+)", command).group(1)
    return found


def fake_cuda_torch(venv: Path) -> None:
    site = next((venv / "lib").glob("python3*/site-packages"))
    info = site / f"torch-{GPU_TORCH}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {GPU_TORCH}\n", encoding="utf-8")
    (info / "INSTALLER").write_text("pip\n", encoding="utf-8")
    (info / "RECORD").write_text(f"torch-{GPU_TORCH}.dist-info/METADATA,,\n", encoding="utf-8")


def torch_version(python: Path, env: dict) -> str:
    run = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


@pytest.mark.parametrize("order", [("app", "tests"), ("tests", "app")])
def test_readme_install_commands_in_either_order_keep_the_torch_build(order, tmp_path):
    """Both install commands of the README, in `order`, in one venv that holds a CUDA torch: each succeeds
    and the torch build is the same after both. pip runs offline (--no-index through the environment)
    against this machine's installed packages (the venv sees them), so the test downloads nothing and a
    requirement that is not installed here fails instead of being fetched."""
    files = readme_install_commands()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    fake_cuda_torch(venv)
    python = venv / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PIP_"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    assert torch_version(python, env) == GPU_TORCH
    for name in order:
        install = subprocess.run([str(python), "-m", "pip", "install", "-r", files[name]], cwd=ROOT,
                                 capture_output=True, text=True, env=env, timeout=600)
        assert install.returncode == 0, f"{README_COMMANDS[name]}:\n{install.stdout[-3000:]}{install.stderr[-3000:]}"
        assert "Installing collected packages: torch" not in install.stdout
        assert torch_version(python, env) == GPU_TORCH, f"{README_COMMANDS[name]} replaced torch"
