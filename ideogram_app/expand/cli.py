"""The `expand` and `describe` subcommands of `python -m ideogram_app.caption` (their arguments are
declared there; the caption core imports this module only when one of them runs).

Prints the canonical caption on stdout and each repair or warning on stderr. Exit codes: 0 a
caption; 1 the model answered without a usable caption (refused, cut off, still invalid after the
retry); 2 no answer (bad arguments or input, no server configured, unreachable, timeout, HTTP error).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .captioner import ENV_BACKEND, describe, expand, make_backend
from .result import BackendError, CaptionRejected, InputError

_ANSWERED = frozenset({"refusal", "truncated"})


def run(args: argparse.Namespace) -> int:
    kind = args.backend or os.environ.get(ENV_BACKEND) or "openai"
    if args.command == "describe" and kind == "local":  # say so before loading a model for nothing
        print("error: the local backend reads text only; describe needs a vision model behind --backend openai",
              file=sys.stderr)
        return 2
    if kind == "local":
        options = {"max_new_tokens": args.max_tokens}
    else:
        options = {"timeout": args.timeout, "max_tokens": args.max_tokens}
    options = {name: value for name, value in options.items() if value is not None}
    try:
        backend = make_backend(kind, url=args.url, model=args.model, key=args.key, **options)
        if args.command == "expand":
            text = _read("-") if args.text == "-" else args.text
            keep = _read(args.keep) if args.keep else None
            width, height = args.size
            result = expand(text, width, height, keep=keep, backend=backend)
        else:
            result = describe(args.image, backend=backend)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BackendError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1 if err.kind in _ANSWERED else 2
    except CaptionRejected as err:
        print(f"error: {err}", file=sys.stderr)
        print(f"the model's last answer was:\n{err.raw}", file=sys.stderr)
        return 1
    for repair in result.repairs:
        print(f"repaired {repair}", file=sys.stderr)
    for warning in result.warnings:
        print(str(warning), file=sys.stderr)
    if result.attempts > 1:
        print(f"asked the model twice: the first answer had {len(result.retried_for)} error(s)", file=sys.stderr)
    print(result.json)
    return 0


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from None
