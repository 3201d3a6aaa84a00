"""`python -m ideogram_app.caption verify FILE | format FILE | preview FILE --size WxH -o OUT.png`.
Exit codes: 0 clean (warnings allowed), 1 the caption has errors, 2 the input cannot be read.
`expand "IDEA" --size WxH` and `describe IMAGE` ask a language model for a caption (docs/expand.md)."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .issues import CaptionFormatError, CaptionSyntaxError
from .model import PlainText
from .parse import parse
from .render import render_layout
from .serialize import to_json
from .verify import verify


class UnreadableInput(Exception):
    """The file (or the output path) cannot be read or written: exit code 2."""


class NotACaption(Exception):
    """The file holds prose, so there is nothing to format or draw: exit code 1."""


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UnreadableInput(f"cannot read {path}: {err}") from None


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise argparse.ArgumentTypeError(f"size must look like 1024x768 (width x height), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _cmd_verify(args: argparse.Namespace) -> int:
    issues = verify(_read(args.file))
    for found in issues:
        print(f"{args.file}: {found}")
    errors = sum(found.severity == "error" for found in issues)
    print(f"{args.file}: {errors} error(s), {len(issues) - errors} warning(s)", file=sys.stderr)
    return 1 if errors else 0


def _load_caption(path: str):
    caption = parse(_read(path))
    if isinstance(caption, PlainText):
        raise NotACaption(f"{path} holds plain text, not a JSON caption")
    return caption


def _cmd_format(args: argparse.Namespace) -> int:
    print(to_json(_load_caption(args.file)))
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    width, height = args.size
    image = render_layout(_load_caption(args.file), width, height)
    try:
        image.save(args.output, format="PNG")
    except OSError as err:
        raise UnreadableInput(f"cannot write {args.output}: {err}") from None
    print(f"wrote {args.output} ({width}x{height})", file=sys.stderr)
    return 0


def _cmd_expand(args: argparse.Namespace) -> int:
    """`expand` / `describe` live in ideogram_app.expand (language models, torch for the local one),
    imported here only, so the caption core stays torch-free."""
    from ideogram_app.expand.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ideogram_app.caption", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="list every issue with its JSON path")
    check.add_argument("file", help="caption file, or - for stdin")
    check.set_defaults(run=_cmd_verify)
    fmt = commands.add_parser("format", help="print the canonical compact JSON")
    fmt.add_argument("file")
    fmt.set_defaults(run=_cmd_format)
    preview = commands.add_parser("preview", help="draw the layout to a PNG")
    preview.add_argument("file")
    preview.add_argument("--size", type=_size, default=(1024, 1024), help="WIDTHxHEIGHT, default 1024x1024")
    preview.add_argument("-o", "--output", required=True, help="output .png")
    preview.set_defaults(run=_cmd_preview)
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--backend", choices=("openai", "local"), help="env IDEOGRAM_EXPAND_BACKEND, default openai")
    model.add_argument("--url", help="OpenAI-compatible API root, e.g. http://localhost:11434/v1 "
                       "(env IDEOGRAM_EXPAND_URL)")
    model.add_argument("--model", help="model name, or the local model folder (env IDEOGRAM_EXPAND_MODEL)")
    model.add_argument("--key", help="API key (safer in env IDEOGRAM_EXPAND_KEY)")
    model.add_argument("--timeout", type=float, help="seconds per server attempt (default 120)")
    model.add_argument("--max-tokens", type=int, help="longest answer in tokens (local default 1200)")
    expand = commands.add_parser("expand", parents=[model], help="plain-text idea -> caption with boxes")
    expand.add_argument("text", help='the idea, or - for stdin; "quoted" strings become text elements')
    expand.add_argument("--size", type=_size, default=(1024, 1024), help="WIDTHxHEIGHT, default 1024x1024")
    expand.add_argument("--keep", help="caption file whose elements are kept unchanged")
    expand.set_defaults(run=_cmd_expand)
    describe = commands.add_parser("describe", parents=[model], help="image -> caption with boxes (vision model)")
    describe.add_argument("image")
    describe.set_defaults(run=_cmd_expand)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UnreadableInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CaptionSyntaxError as err:
        print(f"{args.file}: {err}", file=sys.stderr)
        return 1
    except CaptionFormatError as err:
        for found in err.issues:
            print(f"{args.file}: {found}", file=sys.stderr)
        return 1
    except NotACaption as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
