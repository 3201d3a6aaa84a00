"""Safetensors files without `safetensors.torch`: headers, which files make a component, one tensor at a time.

Why not `safetensors.torch.load_file`: it memory-maps the file, and every page it touches stays in the
process's resident set on top of the copies it returns, so a 9 B model would briefly need two copies in
host RAM. Here each tensor is read with plain `readinto` into its final CPU buffer (page cache is not
part of RSS); `streaming.py` converts it and hands it to a model built on the meta device. Peak host
memory is the model's bytes on the target plus one tensor in flight.

- `TensorInfo`, `read_header(file)`, `read_headers(files)` — names, dtypes and shapes, no data read.
- `resolve_safetensors(path, subfolder)` — repo folder / component folder / file / shard index → files.
- `describe_files(files)` — how error messages name what was loaded.
- `read_tensor(info)`, `iter_tensors(infos, names=None, transient=None)` — tensors in their stored dtype.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, read from the header only."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in `file`
    nbytes: int


def read_header(file: str | Path) -> dict[str, TensorInfo]:
    """Parse a .safetensors header (8-byte little-endian length + JSON) without reading tensor data."""
    file = Path(file)
    with open(file, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ValueError(f"{file}: not a safetensors file (shorter than 8 bytes)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _MAX_HEADER_BYTES:
            raise ValueError(f"{file}: not a safetensors file (header length {header_len} is implausible)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file}: safetensors header is not valid JSON ({exc})") from None
    data_start = 8 + header_len
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype_name = entry.get("dtype")
        if dtype_name not in SAFETENSORS_DTYPES:
            raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        begin, end = entry["data_offsets"]
        infos[name] = TensorInfo(file, SAFETENSORS_DTYPES[dtype_name], tuple(entry["shape"]), data_start + begin, end - begin)
    return infos


def read_headers(files: Iterable[str | Path]) -> dict[str, TensorInfo]:
    """Merged headers of several shards; a key stored twice is an error (it would be ambiguous)."""
    merged: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in read_header(file).items():
            if name in merged:
                raise ValueError(f"tensor {name!r} appears in both {merged[name].file} and {info.file}")
            merged[name] = info
    return merged


def _files_in_folder(folder: Path) -> list[Path] | None:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    return files or None


def resolve_safetensors(path: str | Path, subfolder: str | None = None) -> list[Path]:
    """Resolve `path` to the component's safetensors file(s).

    `path` may be a `.safetensors` file, a `.safetensors.index.json` shard index, a component folder
    holding the file(s), or a repo root whose `subfolder` holds them.
    """
    path = Path(path)
    if path.is_file():
        if path.name.endswith(".safetensors.index.json"):
            weight_map = json.loads(path.read_text())["weight_map"]
            return [path.parent / name for name in sorted(set(weight_map.values()))]
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: expected a .safetensors file, a shard index or a folder")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if subfolder and (path / subfolder).is_dir():
        files = _files_in_folder(path / subfolder)
        if files:
            return files
    files = _files_in_folder(path)
    if files:
        return files
    where = f"{path / subfolder} or {path}" if subfolder else str(path)
    raise FileNotFoundError(f"no .safetensors file found in {where}")


def describe_files(files: list[Path]) -> str:
    """The file, or the folder and shard count, as error messages name a component."""
    return str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} shards)"


def read_tensor(info: TensorInfo, handle=None, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """Read one tensor into CPU memory with plain reads (no mmap), in its stored dtype.

    `buffer` (uint8, at least `info.nbytes`) is filled instead of allocating; the result is a view of it.
    """
    if buffer is None:
        buffer = torch.empty(info.nbytes, dtype=torch.uint8)
    buffer = buffer[: info.nbytes]
    own = handle is None
    f = open(info.file, "rb") if own else handle
    try:
        f.seek(info.start)
        if info.nbytes and f.readinto(memoryview(buffer.numpy())) != info.nbytes:
            raise ValueError(f"{info.file}: truncated data for a tensor at offset {info.start}")
    finally:
        if own:
            f.close()
    return buffer.view(info.dtype).reshape(info.shape)


def iter_tensors(
    infos: Mapping[str, TensorInfo], names: Iterable[str] | None = None, transient: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, cpu tensor)` one at a time in file order, so the caller can convert and drop each.

    Tensors for which `transient(name)` is true are read into one reused scratch buffer and are only
    valid until the next item — for tensors the caller converts at once (e.g. fp8 → bf16). Reusing the
    buffer keeps freed read buffers from fragmenting the heap and inflating resident memory.
    """
    wanted = list(infos) if names is None else list(names)
    wanted.sort(key=lambda n: (str(infos[n].file), infos[n].start))
    handles: dict[Path, object] = {}
    scratch = torch.empty(0, dtype=torch.uint8)
    try:
        for name in wanted:
            info = infos[name]
            if info.file not in handles:
                handles[info.file] = open(info.file, "rb")
            buffer = None
            if transient is not None and transient(name):
                if scratch.numel() < info.nbytes:
                    scratch = torch.empty(0, dtype=torch.uint8)  # drop the old one before growing
                    scratch = torch.empty(info.nbytes, dtype=torch.uint8)
                buffer = scratch
            yield name, read_tensor(info, handles[info.file], buffer)
    finally:
        for handle in handles.values():
            handle.close()

