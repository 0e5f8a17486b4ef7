"""safetensors: lazy, memory-mapped reading (single files) and the one streamed writer.

File layout (https://github.com/huggingface/safetensors, README "Format"):
  u64 LE header length N | N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]}, ...}
  | data, offsets relative to the end of the header.
We read the header ourselves instead of using `safetensors.numpy`, which cannot load BF16 and
copies every tensor; here a tensor is a zero-copy view of an mmap, and its pages are dropped
from our resident set once the caller is done with it.
"""
from __future__ import annotations

import json
import math
import mmap
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError

# safetensors dtype -> numpy storage dtype: every dtype of the specification with a whole number
# of bytes (safetensors/src/tensor.rs `Dtype::size`). BF16 is stored as raw uint16 and the FP8
# types as raw bytes; `to_float32` widens only F64/F32/F16/BF16, so the others are known (the
# header validates) but not read as weights.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"),
    "F8_E5M2": np.dtype("u1"), "F8_E4M3": np.dtype("u1"), "F8_E8M0": np.dtype("u1"),
}
MAX_HEADER = 100_000_000  # the reference implementation's own limit (tensor.rs MAX_HEADER_SIZE)


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
    """Parse and validate a safetensors header as the reference reader does
    (huggingface/safetensors, safetensors/src/tensor.rs `SafeTensors::read_metadata` and
    `Metadata::validate`), before any tensor byte is used or any output exists:

    - u64 LE header length N with N <= 100 MB and 8 + N <= file size;
    - the N bytes are UTF-8 JSON holding one object, no key twice (serde's struct fields and our
      dict would otherwise keep one of two entries silently);
    - `__metadata__`, if present and not null, maps strings to strings;
    - every other key is a tensor {dtype: a known dtype, shape: [non-negative ints],
      data_offsets: [begin, end]} with dtype size x prod(shape) == end - begin;
    - sorted by offset, the tensors tile the data buffer exactly: the first begins at 0, each
      begins where the previous ends (no overlap, no gap), the last ends at the end of the file.
    Raises InputError naming the file (and the tensor) in one line.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path.name}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):  # checked before the read: n may claim gigabytes
            raise InputError(f"{path.name}: truncated safetensors file (header of {n} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise InputError(f"{path.name}: malformed safetensors header (key {e.args[0]!r} "
                         f"appears twice)") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise InputError(f"{path.name}: malformed safetensors header "
                         f"({_first_line(e)})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path.name}: malformed safetensors header (not a JSON object)")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise InputError(f"{path.name}: malformed safetensors header (__metadata__ must map "
                         f"strings to strings)")
    base = 8 + n
    refs = [_entry(path, name, info, base) for name, info in header.items()
            if name != "__metadata__"]
    _check_tiling(path, sorted(refs, key=lambda r: (r.start, r.end)), base, size)
    return {r.name: r for r in refs}


def _entry(path: Path, name: str, info: Any, base: int) -> TensorRef:
    """One tensor's header entry, its types and its byte length checked."""
    def bad(why: str) -> InputError:
        return InputError(f"{path.name}: malformed safetensors header entry {name!r} ({why})")
    if not isinstance(info, dict):
        raise bad("not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad("dtype must be a string")
    if not (isinstance(shape, list) and all(_count(d) for d in shape)):
        raise bad("shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)):
        raise bad("data_offsets must be [begin, end], non-negative integers")
    b, e = offsets
    if b > e:
        raise bad(f"data_offsets [{b}, {e}] end before they begin")
    if dtype not in DTYPES:
        raise InputError(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}")
    want = math.prod(shape) * DTYPES[dtype].itemsize  # Python ints: no overflow to wrap around
    if e - b != want:
        raise InputError(f"{path.name}: tensor {name!r} byte range does not match its shape "
                         f"({e - b} bytes at data_offsets [{b}, {e}], {dtype} {shape} needs "
                         f"{want})")
    return TensorRef(name, dtype, tuple(shape), path, base + b, base + e)


def _check_tiling(path: Path, refs: list[TensorRef], base: int, size: int) -> None:
    """Sorted by offset, the tensors cover [base, size) exactly, each byte once."""
    at, prev = base, None
    for r in refs:
        if r.start < at:
            raise InputError(f"{path.name}: tensors {prev!r} and {r.name!r} overlap "
                             f"(data_offsets {at - base} > {r.start - base})")
        if r.start > at:
            raise InputError(f"{path.name}: data bytes [{at - base}, {r.start - base}) before "
                             f"tensor {r.name!r} belong to no tensor")
        at, prev = r.end, r.name
    if at > size:
        raise InputError(f"{path.name}: truncated safetensors file (data ends at byte {at}, "
                         f"file has {size})")
    if at < size:
        raise InputError(f"{path.name}: {size - at} bytes after the last tensor belong to no "
                         f"tensor (the data must end at the end of the file)")


def _count(x: Any) -> bool:
    return type(x) is int and x >= 0  # not bool, not float


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _first_line(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


PREFETCH = 64 << 20  # bytes of a checkpoint file read ahead of the tensor rows being viewed


class MappedFiles:
    """Read-only mmaps of checkpoint files, opened on first use and closed together."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}
        self._ahead: dict[Path, tuple[int, int]] = {}  # window asked for (_prefetch)
        self._lock = threading.Lock()  # views are taken from worker threads too

    def __enter__(self) -> Self:
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

    def view(self, ref: TensorRef, rows: slice = slice(None)) -> npt.NDArray[Any]:
        """Zero-copy view of `ref` (BF16 as uint16), optionally only a range of rows; the file
        is read ahead of it (see _prefetch)."""
        dt = DTYPES[ref.dtype]
        m = self._map(ref.path)
        arr = np.frombuffer(m, dt, ref.nbytes // dt.itemsize, ref.start)
        arr = arr.reshape(ref.shape)
        if not arr.ndim:
            return arr
        a, _, _ = rows.indices(ref.shape[0])
        self._prefetch(ref.path, m, ref.start + a * (ref.nbytes // max(ref.shape[0], 1)))
        return arr[rows]

    def _prefetch(self, path: Path, m: mmap.mmap, start: int) -> None:
        """Keep PREFETCH bytes from `start` on asked for (MADV_WILLNEED queues the reads and
        returns), so a cold input streams in large requests while the workers compute on what
        came before, instead of one 128 KiB fault-around read at a time. One window per file,
        extended as the views move on (a jump elsewhere starts a new one): each byte is asked
        for once, so a warm input costs next to nothing."""
        with self._lock:
            lo, hi = self._ahead.get(path, (0, 0))
            if not lo <= start <= hi:
                lo = hi = start // mmap.PAGESIZE * mmap.PAGESIZE
            end = min(len(m), start + PREFETCH)
            if end - hi < PREFETCH // 4 and end < len(m):
                return
            self._ahead[path] = (lo, end)
        if end > hi:  # madvise wants a page-aligned start (end is any offset)
            m.madvise(mmap.MADV_WILLNEED, hi - hi % mmap.PAGESIZE, end - hi + hi % mmap.PAGESIZE)

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


def to_float32(arr: npt.NDArray[Any], dtype: str) -> npt.NDArray[np.float32]:
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


class Entry(Protocol):
    """What the writer needs to know of a tensor before its bytes (hf_export's and repack_hf's
    records, or a plain `Tensor`)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...  # safetensors dtype
    @property
    def shape(self) -> tuple[int, ...]: ...


class Tensor(NamedTuple):
    """A plain entry: (name, dtype, shape)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


E = TypeVar("E", bound=Entry)


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of a `dtype` tensor of `shape` in the data section."""
    return math.prod(int(d) for d in shape) * DTYPES[dtype].itemsize


def write_safetensors(path: Path, entries: Sequence[E],
                      chunks: Callable[[E], Iterable[npt.NDArray[Any]]]) -> None:
    """The one safetensors writer: the header first (every entry's offsets, from its dtype and
    shape), then the bytes of each entry's `chunks(entry)` in order, as they are (already the
    storage dtype: BF16 as uint16, a scale as its raw bytes); their total must be the entry's
    size. A caller yields a tensor in row chunks (or whole), so memory holds one chunk at a time.
    Writes `path` as it is: outputs go through containers/atomic.py (hf is written inside an
    `atomic_dir`)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        n = nbytes(e.dtype, e.shape)
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                          "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for e in entries:
            done, want = 0, nbytes(e.dtype, e.shape)
            for a in chunks(e):
                a = np.ascontiguousarray(a)
                f.write(a.data.cast("B"))
                done += a.nbytes
            if done != want:  # a bug, not a user error
                raise PackError(f"{e.name}: wrote {done} of {want} bytes")
