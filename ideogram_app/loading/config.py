"""The one config reader: a component's `config.json` -> its config object.

Each loader says what to build from the parsed JSON and what to do when there is no file (the DiT
infers its shape from the tensors, the text encoder assumes Qwen3-VL-8B, the VAE the released FLUX.2
VAE); name tables that map another project's field names onto ours live next to that loader.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")


def read_config(file: Path, build: Callable[[dict[str, Any], str], T], missing: Callable[[], T]) -> T:
    """`build(raw, source)` from the JSON object in `file`, or `missing()` when there is no such file.

    `source` is the file's name for `build`'s error messages; invalid JSON fails here, naming the file.
    """
    if not file.is_file():
        return missing()
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a JSON object, found {type(raw).__name__}")
    return build(raw, str(file))


def dataclass_from_config(cls: type[T], raw: Mapping[str, Any]) -> T:
    """`cls(**fields)` from the keys of `raw` that name a field of `cls` (a loader renames foreign
    names first, with its own table).

    Other keys (`_class_name`, `quantization_config`, …) are ignored; JSON lists become tuples; a null
    leaves the field at its default (diffusers writes unset optional fields as null).
    """
    known = {field.name for field in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in known and value is not None:
            values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
