"""The JSON Schema (2020-12) of the official caption, for other tools (editors, constrained
decoding) and as an independent cross-check of `verify` in the tests."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_PATH = Path(__file__).with_name("schema.json")


@cache
def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def schema_errors(data: Any) -> list[str]:
    """Messages of every schema violation in `data` (a parsed caption), each prefixed with its path."""
    validator = Draft202012Validator(load_schema())
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(data)]
