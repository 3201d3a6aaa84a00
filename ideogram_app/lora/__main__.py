"""`python -m ideogram_app.lora inspect FILE` | `convert IN OUT --to comfyui|diffusers`.

Both check the file against a DiT config: the released model by default, or `--config` (a
config.json with official or diffusers field names, or the folder holding it).
Exit codes: 0 usable (warnings allowed), 1 the file is refused (nothing matches, wrong shape, NaN, …),
2 a file cannot be read or written.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ideogram_app.loading.dit import dit_config_from_dict
from ideogram_app.lora.apply import config_targets
from ideogram_app.lora.formats import read_lora
from ideogram_app.lora.read import RejectedLora, UnreadableLora
from ideogram_app.lora.write import DESCRIPTIVE_KEYS, write_diffusers, write_native
from ideogram_app.model.ideogram4_dit import Ideogram4Config


def _config(path: str | None) -> Ideogram4Config:
    if path is None:
        return Ideogram4Config()
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        raw = json.loads(file.read_text())
    except OSError as exc:
        raise UnreadableLora(f"cannot read --config {file}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UnreadableLora(f"--config {file}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise UnreadableLora(f"--config {file}: expected a JSON object, found {type(raw).__name__}")
    try:
        return dit_config_from_dict(raw, f"--config {file}")
    except ValueError as exc:
        raise UnreadableLora(str(exc)) from None


def _read(path: str, config: str | None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lora = read_lora(path, config_targets(_config(config)))
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return lora


def _cmd_inspect(args: argparse.Namespace) -> int:
    lora = _read(args.file, args.config)
    print(f"file: {lora.source}")
    print(f"format: {lora.format}")
    print(f"modules: {len(lora.modules)} matched ({', '.join(lora.kinds)})")
    print(f"rank: {', '.join(map(str, lora.ranks))}")
    print(f"alpha: {', '.join(f'{a:g}' for a in lora.alphas)}")
    print(f"unmatched keys: {len(lora.unmatched)}")
    for key in lora.unmatched:
        print(f"  {key}")
    for key, value in sorted(lora.metadata.items()):
        shown = value if len(value) <= 200 else value[:200] + " …"
        print(f"metadata {key}: {shown}")
    if args.modules:
        for name, module in lora.modules.items():
            print(f"  {name}: rank {module.rank}, alpha {module.alpha:g}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    lora = _read(args.input, args.config)
    carried = {k: lora.metadata[k] for k in DESCRIPTIVE_KEYS if k in lora.metadata}
    carried["converted_from"] = f"{Path(lora.source).name} ({lora.format})"
    write = write_native if args.to == "comfyui" else write_diffusers
    try:
        write(args.output, lora.modules, metadata=carried)
    except OSError as exc:
        raise UnreadableLora(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {args.output} ({args.to}, {len(lora.modules)} modules, from {lora.format})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ideogram_app.lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="format, rank, alpha, targets and matched modules of a LoRA file")
    inspect.add_argument("file")
    inspect.add_argument("--modules", action="store_true", help="also list every matched module")
    inspect.set_defaults(run=_cmd_inspect)
    convert = commands.add_parser("convert", help="rewrite a LoRA in the native (ComfyUI) or diffusers layout")
    convert.add_argument("input")
    convert.add_argument("output")
    convert.add_argument("--to", required=True, choices=("comfyui", "diffusers"))
    convert.set_defaults(run=_cmd_convert)
    for sub in (inspect, convert):
        sub.add_argument("--config", help="DiT config.json (or its folder) to check against; default: the released model")
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UnreadableLora as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RejectedLora as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
