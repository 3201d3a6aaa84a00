"""Which weights a LoRA file holds: the sha256 of its contents, the identity image metadata records.

Hashing a LoRA of a few hundred MB takes about a second, and the same file is identified by the app
(every generation checks the folder's files against what is loaded) and by the pipeline (when it
loads one), so each digest is remembered while the file's size and modification time stay the same.
"""
from __future__ import annotations

import hashlib
import os
import threading

_digests: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256 of the contents
_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of the file's contents, hashed once per version of the file."""
    stat = os.stat(path)
    key = (os.fspath(path), stat.st_mtime_ns, stat.st_size)
    with _lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    with _lock:
        _digests[key] = digest.hexdigest()
        return _digests[key]
