"""Command line: parse and check the settings (no model work), then run (ideogram_app/train/loop.py).

Exit status: 0 finished or stopped on request, 1 failed during the run (run.json holds the message),
2 bad settings or input (nothing was written).
"""
from __future__ import annotations

import os
import sys

from ideogram_app.train.config import ConfigError, parse_args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config, warnings = parse_args(argv)
    except ConfigError as err:
        for flag, message in err.problems:
            print(f"error: {flag}: {message}", file=sys.stderr)
        return 2
    from ideogram_app.train.memory import prefer_expandable_segments  # after the settings are known good: loads torch & co

    prefer_expandable_segments()  # before anything touches CUDA
    from ideogram_app.train.loop import run_training

    return run_training(config, warnings)
