"""CPU thread settings of the app and the CLI: both set `OMP_WAIT_POLICY=PASSIVE` before torch loads
OpenMP (a value the user set wins), so a CPU generation from the command line is as fast as the same
call inside this suite, whose conftest sets the same policy. Without it, OpenMP's spinning waits made
the app and the CLI 2-10 times slower than the tests on a busy 2-core machine (docs/app.md, "CPU threads")."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Records the policy at the moment torch is first imported, then runs an entry point with --help.
SPY = """
import os, runpy, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("OMP_WAIT_POLICY at torch import:", os.environ.get("OMP_WAIT_POLICY"), flush=True)
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, Spy())
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__") if sys.argv[0].endswith(".py") else \\
        runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
"""
# The CLI's own module import (which sets the policy) and the pipeline's imports, then main() timed: the
# process start and the imports (transformers alone takes seconds) are not part of generation; in the
# suite they are done already.
TIMED_CLI = """
import sys, time
from ideogram_app.generate import main
import ideogram_app.pipeline.pipeline
start = time.perf_counter()
code = main(sys.argv[1:])
print(f"SECONDS {time.perf_counter() - start:.3f}")
sys.exit(code)
"""
CAPTION = ('{"high_level_description":"A poster.","compositional_deconstruction":{"background":"A plain wall.","elements":[{"type":"text",'
           '"bbox":[100,100,300,900],"text":"HELLO","desc":"Big letters."}]}}')


def clean_env(**extra: str) -> dict:
    """The environment of a user who never heard of OMP_WAIT_POLICY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "PYTEST"))}
    return {**env, **extra}


@pytest.mark.parametrize("entry", ["app.py", "ideogram_app.generate"])
def test_the_app_and_the_cli_set_passive_waits_before_torch_loads(entry):
    run = subprocess.run([sys.executable, "-c", SPY, entry], cwd=ROOT, env=clean_env(), capture_output=True,
                         text=True, timeout=300)
    assert "OMP_WAIT_POLICY at torch import: PASSIVE" in run.stdout, run.stdout + run.stderr
    if entry == "app.py":
        return  # the same setdefault line in both; the app's imports take ~25 s here, so its user value is not re-run
    kept = subprocess.run([sys.executable, "-c", SPY, entry], cwd=ROOT, env=clean_env(OMP_WAIT_POLICY="ACTIVE"),
                          capture_output=True, text=True, timeout=300)
    assert "OMP_WAIT_POLICY at torch import: ACTIVE" in kept.stdout, kept.stdout + kept.stderr


def test_cli_generation_is_as_fast_as_inside_the_suite(tiny_repo, tmp_path, capsys):
    """The same 512² turbo request on the tiny model: main() in a fresh CLI process started without any
    OpenMP setting, and main() in this test process; the faster of two runs each (the machine is shared)."""
    from ideogram_app.generate import main

    caption = tmp_path / "caption.json"
    caption.write_text(CAPTION, encoding="utf-8")
    argv = ["--model", str(tiny_repo), "--caption", str(caption), "--size", "512x512", "--preset", "turbo",
            "--seed", "1", "--memory", "cpu"]
    cli, suite = [], []
    for attempt in range(2):
        run = subprocess.run([sys.executable, "-c", TIMED_CLI, *argv, "--out", str(tmp_path / f"cli{attempt}.png")],
                             cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        cli.append(float(run.stdout.split("SECONDS")[1]))
        start = time.perf_counter()
        assert main([*argv, "--out", str(tmp_path / f"suite{attempt}.png")]) == 0
        suite.append(time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nCLI main() {min(cli):.2f} s (runs {cli}), in the suite {min(suite):.2f} s (runs {suite})")
    assert min(cli) <= 1.3 * min(suite) + 1.0, (cli, suite)
