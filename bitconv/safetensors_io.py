"""Lazy, memory-mapped safetensors access (single files), and a streaming writer for fixtures.

File layout (https://github.com/huggingface/safetensors, README "Format"):
  u64 LE header length N | N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]}, ...}
  | data, offsets relative to the end of the header.
We read the header ourselves instead of using `safetensors.numpy`, which cannot load BF16 and
copies every tensor; here a tensor is a zero-copy view of an mmap, and its pages are dropped
from our resident set once the caller is done with it.
"""
from __future__ import annotations

import json
import mmap
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError

# safetensors dtype -> (numpy storage dtype, bytes per element). BF16 is stored as raw uint16.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
MAX_HEADER = 100_000_000  # the reference implementation's own limit


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: absolute byte range [start, end) of `path`."""

    name: str
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    path: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse a safetensors header and check every tensor lies inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path.name}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise InputError(f"{path.name}: truncated safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path.name}: malformed safetensors header ({e})") from None
    base = 8 + n
    refs: dict[str, TensorRef] = {}
    if not isinstance(header, dict):
        raise InputError(f"{path.name}: malformed safetensors header (not a JSON object)")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if not (all(isinstance(x, int) and x >= 0 for x in (*shape, b, e)) and b <= e):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path.name}: malformed safetensors header entry {name!r}") from None
        if dtype not in DTYPES:
            raise InputError(f"{path.name}: tensor {name!r} has unsupported dtype {dtype}")
        if e - b != int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize:
            raise InputError(f"{path.name}: tensor {name!r} byte range does not match its shape")
        refs[name] = TensorRef(name, dtype, shape, path, base + b, base + e)
    end = max((r.end for r in refs.values()), default=base)
    if end > size:
        raise InputError(f"{path.name}: truncated safetensors file (data ends at byte {end}, "
                         f"file has {size})")
    return refs


class MappedFiles:
    """Read-only mmaps of checkpoint files, opened on first use and closed together."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}
        self._lock = threading.Lock()  # views are taken from worker threads too

    def __enter__(self) -> MappedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self._maps.values():
            try:
                m.close()
            except BufferError:  # a caller still holds a view: unmapped when it is collected
                pass
        self._maps.clear()

    def _map(self, path: Path) -> mmap.mmap:
        with self._lock:
            if path not in self._maps:
                with open(path, "rb") as f:
                    self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            return self._maps[path]

    def view(self, ref: TensorRef, rows: slice = slice(None)) -> npt.NDArray:
        """Zero-copy view of `ref` (BF16 as uint16), optionally only a range of rows."""
        dt = DTYPES[ref.dtype]
        arr = np.frombuffer(self._map(ref.path), dt, ref.nbytes // dt.itemsize, ref.start)
        arr = arr.reshape(ref.shape)
        return arr[rows] if arr.ndim else arr

    def release(self, ref: TensorRef, rows: slice = slice(None)) -> None:
        """Drop the pages of the tensor (or of a range of its rows) from our resident set;
        the page cache keeps them. Mapped file pages count in peak RSS too."""
        m = self._maps.get(ref.path)
        if m is None:
            return
        row_bytes = ref.nbytes // ref.shape[0] if ref.shape and ref.shape[0] else ref.nbytes
        a, b, _ = rows.indices(ref.shape[0] if ref.shape else 1)
        start, end = ref.start + a * row_bytes, min(ref.start + b * row_bytes, ref.end)
        start -= start % mmap.PAGESIZE
        if end > start:
            m.madvise(mmap.MADV_DONTNEED, start, end - start)


def to_float32(arr: npt.NDArray, dtype: str) -> npt.NDArray[np.float32]:
    """Widen a stored float tensor to float32 (bf16: the 16 bits are the top of an f32)."""
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F32", "F16", "F64"):
        return arr.astype(np.float32, copy=False)
    raise InputError(f"expected a float tensor, got {dtype}")


def to_bf16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Round float32 to bfloat16 bits, nearest-even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(
    path: Path,
    entries: Iterable[tuple[str, str, tuple[int, ...]]],
    fill: Callable[[str], npt.NDArray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write (name, dtype, shape) entries in the given order; `fill(name)` yields each
    tensor's storage array only when it is written, so one tensor is in memory at a time."""
    entries = list(entries)
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        n = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, dtype, shape in entries:
            arr = np.ascontiguousarray(fill(name), dtype=DTYPES[dtype])
            assert arr.shape == tuple(shape), (name, arr.shape, shape)
            f.write(memoryview(arr).cast("B"))
