"""Bounded reading of an untrusted `.safetensors` LoRA file.

LoRA files arrive from users (uploads, downloads from model hubs), so the reader assumes nothing:
the header length, the number of tensors, every dtype, shape and byte range are checked before a
single tensor byte is read, and a file that lies about any of them is refused with the file name and
the first offending entry. Memory use is bounded by the file's own size: a tensor's byte range must
lie inside the file and match its shape, so no header can make us allocate more than was stored.

The format itself is simple (see docs/lora.md): 8 bytes little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the data.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ideogram_app.loading.safetensors_io import SAFETENSORS_DTYPES

# A LoRA for all 34 blocks and every target has ~1000 tensors and a header of ~100 kB; these bounds
# leave room for unusual trainers while keeping the JSON parse of a hostile header cheap.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 50_000
MAX_DIMS = 8

# Only the floating dtypes a safetensors header may name (SAFETENSORS_DTYPES) can hold LoRA factors.
FACTOR_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


class UnreadableLora(ValueError):
    """The file cannot be read as safetensors at all: missing, not safetensors, truncated, lying header."""


class RejectedLora(ValueError):
    """The file is readable but is not a LoRA this model can use (no match, wrong shape, NaN, …)."""


@dataclass(frozen=True)
class Entry:
    """One tensor as the header describes it; `start` is the absolute byte offset in the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


@dataclass
class SafetensorsFile:
    """A validated header. Tensors are read on demand with `read(key)`."""

    path: Path
    entries: dict[str, Entry]
    metadata: dict[str, str]

    def read(self, key: str) -> torch.Tensor:
        """The tensor `key` in its stored dtype, on the CPU."""
        entry = self.entries[key]
        buffer = bytearray(entry.nbytes)
        with open(self.path, "rb") as handle:
            handle.seek(entry.start)
            if handle.readinto(buffer) != entry.nbytes:
                raise UnreadableLora(f"{self.path}: truncated: tensor {key!r} ends past the end of the file")
        if not entry.nbytes:
            return torch.empty(entry.shape, dtype=entry.dtype)
        return torch.frombuffer(buffer, dtype=torch.uint8).view(entry.dtype).reshape(entry.shape)


def open_safetensors(path: str | Path) -> SafetensorsFile:
    """Read and validate the header of `path`; raise UnreadableLora naming the first problem."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableLora(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise UnreadableLora(f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header length)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            raise UnreadableLora(
                f"{path}: not a safetensors file, or a hostile one: header length {header_len} bytes "
                f"(limit {MAX_HEADER_BYTES})"
            )
        if 8 + header_len > size:
            raise UnreadableLora(f"{path}: truncated: the header needs {header_len} bytes, the file has {size - 8} after the length")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableLora(f"{path}: not a safetensors file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise UnreadableLora(f"{path}: not a safetensors file (header is a JSON {type(header).__name__}, not an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise UnreadableLora(f"{path}: __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise UnreadableLora(f"{path}: {len(header)} tensors, more than the {MAX_TENSORS} a LoRA file may hold")
    data_start = 8 + header_len
    data_len = size - data_start
    entries = {key: _entry(path, key, value, data_start, data_len) for key, value in header.items()}
    return SafetensorsFile(path, entries, dict(metadata))


def _entry(path: Path, key: str, value: object, data_start: int, data_len: int) -> Entry:
    where = f"{path}: tensor {key!r}"
    if not isinstance(value, dict):
        raise UnreadableLora(f"{where}: header entry is not an object")
    dtype = SAFETENSORS_DTYPES.get(value.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise UnreadableLora(f"{where}: unknown dtype {value.get('dtype')!r}")
    shape, offsets = value.get("shape"), value.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(n) is int and n >= 0 for n in shape)):
        raise UnreadableLora(f"{where}: shape {shape!r} is not a list of at most {MAX_DIMS} non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
        raise UnreadableLora(f"{where}: data_offsets {offsets!r} is not a pair of integers")
    begin, end = offsets
    nbytes = math.prod(shape) * dtype.itemsize
    if not 0 <= begin <= end or end - begin != nbytes:
        raise UnreadableLora(f"{where}: data_offsets {offsets} do not hold {nbytes} bytes for shape {shape} {value['dtype']}")
    if end > data_len:
        raise UnreadableLora(f"{where}: truncated: its data ends at byte {end}, the file holds only {data_len} bytes of data")
    return Entry(dtype, tuple(shape), data_start + begin, nbytes)
