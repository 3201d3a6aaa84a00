"""`python -m ideogram_app.lora inspect | convert`: the happy paths in real subprocesses (output, files),
the refusals through the same `main` in-process (exit codes 1 and 2 with their messages)."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from ideogram_app.loading.dit import dit_config_from_dict
from ideogram_app.lora import config_targets, read_lora
from ideogram_app.lora.__main__ import main
from tests.fixtures.tiny_dit import tiny_dit_config
from tests.lora import loras

ROOT = Path(__file__).resolve().parents[2]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ideogram_app.lora", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_inspect_and_convert(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_dit_config(loras.LLM_DIM)))
    truth = loras.split_truth(40, ranks=(2, 2, 2), alpha=1.0, globals_=True)
    source = loras.write_onetrainer(tmp_path / "onetrainer.safetensors", truth)

    done = cli("inspect", source, "--config", tmp_path, "--modules")  # the folder holding config.json
    assert done.returncode == 0, done.stderr
    assert "format: onetrainer" in done.stdout
    assert "modules: 19 matched (adaln_modulation, adaln_proj, attention.o, attention.qkv, feed_forward.w1" in done.stdout
    assert "rank: 4, 6" in done.stdout and "alpha: 1, 3" in done.stdout and "unmatched keys: 0" in done.stdout
    assert "  layers.1.attention.qkv: rank 6, alpha 3" in done.stdout

    out = tmp_path / "converted.safetensors"
    done = cli("convert", source, out, "--to", "diffusers", "--config", config)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (diffusers, 19 modules, from onetrainer)" in done.stderr
    targets = config_targets(dit_config_from_dict(tiny_dit_config(loras.LLM_DIM)))
    converted = read_lora(out, targets)
    assert converted.format == "diffusers" and converted.metadata["converted_from"] == "onetrainer.safetensors (onetrainer)"
    for name, module in read_lora(source, targets).modules.items():  # the conversion is exact
        other = converted.modules[name]
        torch.testing.assert_close(other.factor * other.up.double() @ other.down.double(),
                                   module.factor * module.up.double() @ module.down.double(), rtol=1e-6, atol=1e-7)



def test_exit_codes_name_the_problem(tmp_path, capsys):
    """Same entry point, in-process (each interpreter start costs seconds on the CI machine)."""
    source = loras.write_onetrainer(tmp_path / "onetrainer.safetensors", loras.split_truth(41))
    assert main(["inspect", str(source)]) == 1  # against the released model's shapes
    assert ("key 'transformer.layers.0.adaln_modulation.lora_down.weight' has shape (4, 32), the model's "
            "'layers.0.adaln_modulation' needs (rank, 512)") in capsys.readouterr().err
    (tmp_path / "text.safetensors").write_text("hello")
    assert main(["convert", str(tmp_path / "text.safetensors"), str(tmp_path / "x.safetensors"), "--to", "comfyui"]) == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert main(["inspect", str(source), "--config", str(tmp_path / "nowhere.json")]) == 2
    assert "cannot read --config" in capsys.readouterr().err
