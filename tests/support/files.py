"""Byte-level helpers for the tests that damage a file on purpose."""
from __future__ import annotations

import json
import struct
from pathlib import Path


def tensor_range(path: Path, name: str) -> tuple[int, int, str]:
    """Absolute byte range and dtype of one tensor, parsed from the safetensors header by hand."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    info = json.loads(raw[8:8 + n])[name]
    b, e = info["data_offsets"]
    return 8 + n + b, 8 + n + e, info["dtype"]


def patch_bytes(path: Path, offset: int, data: bytes) -> None:
    """Overwrite `data` at `offset` in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
