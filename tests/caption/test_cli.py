"""The CLI through a real subprocess: output and exit codes 0 (clean), 1 (caption errors),
2 (unreadable input)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
F1 = ROOT / "ideogram_app" / "caption" / "examples" / "formula1_diffsynth.json"


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ideogram_app.caption", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, input=stdin, timeout=60)


def test_verify_exit_codes(tmp_path):
    assert run("verify", F1).returncode == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"compositional_deconstruction":{"background":"x","elements":[{"type":"obj","bbox":[5,0,1,10],'
                   '"desc":"d"}]},"canvas":"A4"}')
    result = run("verify", bad)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any("bbox_order" in line and "compositional_deconstruction.elements[0].bbox" in line for line in lines)
    assert any("unknown_key" in line and "canvas" in line for line in lines)
    assert run("verify", tmp_path / "missing.json").returncode == 2
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert run("verify", binary).returncode == 2


def test_verify_warnings_only_is_exit_0(tmp_path):
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(F1.read_text(encoding="utf-8")), indent=2), encoding="utf-8")
    result = run("verify", pretty)
    assert result.returncode == 0 and "not_compact" in result.stdout


def test_verify_reads_stdin():
    result = run("verify", "-", stdin='{"a": 1,}')
    assert result.returncode == 1 and "line 1, column 9" in result.stdout


def test_format_prints_canonical_json(tmp_path):
    source = tmp_path / "c.json"
    source.write_text('{\n "compositional_deconstruction": {"elements": [{"desc": "Sign.", "text": "CAFÉ", '
                      '"type": "text"}], "background": "Wall."},\n "high_level_description": "A sign \\u00a9"\n}',
                      encoding="utf-8")
    result = run("format", source)
    assert result.returncode == 0
    assert result.stdout == ('{"high_level_description":"A sign ©","compositional_deconstruction":{"background":"Wall.",'
                             '"elements":[{"type":"text","text":"CAFÉ","desc":"Sign."}]}}\n')


def test_format_refuses_broken_and_plain_text(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "compositional_deconstruction": {\n    "background": "x"\n    "elements": []}}')
    result = run("format", broken)
    assert result.returncode == 1 and "line 4, column 5" in result.stderr
    prose = tmp_path / "prose.txt"
    prose.write_text("a cat")
    assert run("format", prose).returncode == 1


def test_preview_writes_png_of_the_requested_size(tmp_path):
    out = tmp_path / "preview.png"
    result = run("preview", F1, "--size", "1536x640", "-o", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.size == (1536, 640) and image.format == "PNG"
    assert run("preview", F1, "--size", "big", "-o", out).returncode == 2
    assert run("preview", tmp_path / "none.json", "-o", out).returncode == 2


def test_expand_and_describe_are_lazy_subcommands():
    """The language-model subcommands import ideogram_app.expand only when they run: the caption
    core stays free of torch and of the expansion package."""
    probe = ("import sys; from ideogram_app.caption.__main__ import main; main(['verify', sys.argv[1]]); "
             "print(sorted(m for m in ('torch', 'ideogram_app.expand') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe, str(F1)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_EXPAND_")}
    result = subprocess.run([sys.executable, "-m", "ideogram_app.caption", "expand", "a cat"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "IDEOGRAM_EXPAND_URL" in result.stderr
