"""GGUF v3 container: the streaming writer (the reader is gguf_reader.py); both know bitnet.cpp's types.

Stock gguf-py cannot read type 36 (I2_S): its reader does `GGMLQuantizationType(36)` and raises,
and n/4 + 32 bytes fits no (block_size, type_size) pair. So bitconv owns the container code and
its type ids (bitconv/gguf_values.py; gguf-py is not imported); the packed types' sizes are the
codecs' (bitconv/formats). References: reference/llama-cpp.md
§2.5-2.6, reference/bitnet-cpp.md §1.1 and §2.1.

Layout (little-endian; `str` = u64 byte length + UTF-8 bytes, no NUL):

    "GGUF" | u32 version = 3 | u64 n_tensors | u64 n_kv
    n_kv x      str key | u32 value_type | value
                    ARRAY value = u32 subtype | u64 count | count x value
    n_tensors x str name | u32 n_dims | u64 ne[0] .. ne[n_dims-1] | u32 ggml_type | u64 offset
                    ne[0] is the contiguous axis (numpy's last); offset counts from the data start
    zeros up to a multiple of `general.alignment` (default 32) from byte 0  <- data start
    tensor 0 bytes | zeros to alignment | tensor 1 bytes | zeros to alignment | ...

GGUF stores no byte sizes: readers derive them from type and shape (`tensor_nbytes`), and llama.cpp
requires each offset to equal the running sum of padded sizes, so tensors are written in info order.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats.registry import SIZES
from bitconv.gguf_values import GGMLType, GGUFValueType
from bitconv.types import KV

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NAME_BYTES = 63  # GGML_MAX_NAME = 64 counts the C string's NUL (ggml/src/gguf.cpp L657)

# ggml type ids (where each comes from: gguf_values.GGMLType). 36/38/39 are bitnet.cpp's, so
# those files are fork-only; 41/42 are mainline's Q1_0/Q2_0, unused by the fork; 40 (mainline
# NVFP4) is neither's ternary type and stays unknown (DESIGN.md §5b).
F32, F16, I8, BF16 = GGMLType.F32, GGMLType.F16, GGMLType.I8, GGMLType.BF16
TQ1_0, TQ2_0, I2_S, TL1, TL2 = (GGMLType.TQ1_0, GGMLType.TQ2_0, GGMLType.I2_S, GGMLType.TL1,
                                GGMLType.TL2)
Q1_0, Q2_0 = GGMLType.Q1_0, GGMLType.Q2_0
_PLAIN_SIZES: dict[int, int] = {F32: 4, F16: 2, I8: 1, BF16: 2}
# The packed types' names and sizes are the codecs' (formats/registry.py SIZES): gguf 0.19.0
# from PyPI knows TQ1_0/TQ2_0/Q1_0 but not Q2_0, and none of bitnet.cpp's types.
TYPE_NAMES: dict[int, str] = {F32: "F32", F16: "F16", I8: "I8", BF16: "BF16"} | {
    t: c.spec.type_name for t, c in sorted(SIZES.items())}
_ARRAY_DTYPES: dict[int, np.dtype[Any]] = {F32: np.dtype("<f4"), F16: np.dtype("<f2"), I8: np.dtype("i1")}

_V = GGUFValueType
_SCALAR_FMT: dict[GGUFValueType, str] = {
    _V.UINT8: "<B", _V.INT8: "<b", _V.UINT16: "<H", _V.INT16: "<h", _V.UINT32: "<I",
    _V.INT32: "<i", _V.FLOAT32: "<f", _V.BOOL: "<?", _V.UINT64: "<Q", _V.INT64: "<q",
    _V.FLOAT64: "<d",
}
_NP_DTYPES = {vt: np.dtype(fmt) for vt, fmt in _SCALAR_FMT.items()}
_U64 = struct.Struct("<Q")


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    """Byte size of a tensor's data as ggml_nbytes computes it; `shape` is in numpy order.

    Raises InputError for an unknown type or a shape the type cannot hold.
    """
    if ggml_type not in TYPE_NAMES:
        raise InputError(f"unknown ggml type {ggml_type}")
    n = math.prod(shape)
    if ggml_type in _PLAIN_SIZES:
        return n * _PLAIN_SIZES[ggml_type]
    if n == 0:
        return 0  # ggml_nbytes returns 0 as soon as one ne[i] <= 0, even for I2_S
    return SIZES[ggml_type].nbytes(shape)  # InputError for a shape the type cannot hold


def _pad_to(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _first_duplicate(items: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor announced to GGUFWriter before any data is written."""

    name: str
    shape: tuple[int, ...]  # numpy order
    ggml_type: int
    nbytes: int


def _encode_str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return _U64.pack(len(b)) + b


def _encode_array(key: str, subtype: GGUFValueType, value: Any) -> bytes:
    if subtype == _V.STRING:
        items = [_encode_str(s) for s in value]
        return struct.pack("<IQ", subtype, len(items)) + b"".join(items)
    if subtype not in _NP_DTYPES:
        raise PackError(f"KV {key!r}: arrays of {subtype.name} are not supported")
    src = np.asarray(value)
    try:
        arr = src.astype(_NP_DTYPES[subtype])
        # A silent wrap or truncation would corrupt ids, so integers and bools must be exact.
        ok = src.ndim == 1 and (arr.dtype.kind not in "iub" or np.array_equal(arr, src))
    except (OverflowError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PackError(f"KV {key!r}: value is not a 1-D array of {subtype.name}")
    return struct.pack("<IQ", subtype, arr.size) + arr.tobytes()


def _encode_kv(kv: KV) -> bytes:
    vtype = GGUFValueType(kv.vtype)
    head = _encode_str(kv.key) + struct.pack("<I", vtype)
    if vtype == _V.STRING:
        if not isinstance(kv.value, (str, bytes)):
            raise PackError(f"KV {kv.key!r}: STRING value must be str, got {kv.value!r}")
        return head + _encode_str(kv.value)
    if vtype == _V.ARRAY:
        if kv.subtype is None:
            raise PackError(f"KV {kv.key!r}: ARRAY needs a subtype")
        return head + _encode_array(kv.key, GGUFValueType(kv.subtype), kv.value)
    if vtype == _V.BOOL and not isinstance(kv.value, (bool, np.bool_)):
        raise PackError(f"KV {kv.key!r}: BOOL value must be bool, got {kv.value!r}")
    try:
        return head + struct.pack(_SCALAR_FMT[vtype], kv.value)
    except (struct.error, OverflowError, TypeError):
        raise PackError(f"KV {kv.key!r}: {kv.value!r} does not fit {vtype.name}") from None


def _encode_header(kvs: Sequence[KV], tensors: Sequence[TensorInfo], alignment: int) -> bytes:
    kvs = list(kvs)
    keys = [kv.key for kv in kvs]
    if "general.alignment" in keys:
        kv = kvs[keys.index("general.alignment")]
        if kv.vtype != _V.UINT32 or kv.value != alignment:
            raise PackError(f"KV 'general.alignment' = {kv.value!r} disagrees with alignment="
                            f"{alignment}; pass only alignment=")
    elif alignment != DEFAULT_ALIGNMENT:
        kvs.append(KV("general.alignment", _V.UINT32, alignment))
    if (dup := _first_duplicate(keys)) is not None:
        raise PackError(f"duplicate KV key {dup!r}")
    if (dup := _first_duplicate(t.name for t in tensors)) is not None:
        raise PackError(f"duplicate tensor name {dup!r}")
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kvs))]
    parts += [_encode_kv(kv) for kv in kvs]
    offset = 0
    for t in tensors:
        name = t.name.encode("utf-8")
        if len(name) > MAX_NAME_BYTES:
            raise PackError(f"tensor name {t.name!r} is {len(name)} bytes; llama.cpp allows at "
                            f"most {MAX_NAME_BYTES}")
        if len(t.shape) > MAX_DIMS or any(d < 0 for d in t.shape):
            raise PackError(f"tensor {t.name!r}: bad shape {t.shape} (GGUF allows up to 4 dims)")
        try:
            expected = tensor_nbytes(t.ggml_type, t.shape)
        except InputError as e:
            raise PackError(f"tensor {t.name!r}: {e}") from None
        if t.nbytes != expected:
            raise PackError(f"tensor {t.name!r}: nbytes {t.nbytes} but {TYPE_NAMES[t.ggml_type]} "
                            f"{t.shape} takes {expected}")
        dims = tuple(reversed(t.shape))  # GGUF lists ne[0] (the contiguous axis) first
        parts += [_encode_str(name), struct.pack(f"<I{len(dims)}Q", len(dims), *dims),
                  struct.pack("<IQ", t.ggml_type, offset)]
        offset += _pad_to(t.nbytes, alignment)
    return b"".join(parts)


class GGUFWriter:
    """Streams a GGUF file: the header at construction, then each tensor's bytes in info order.

    Only the current chunk is ever in memory. `f` must be positioned at the start of the file,
    since GGUF padding is counted from byte 0; it may be unseekable, and is not closed.

    Example:
        w = GGUFWriter(f, kvs, [TensorInfo("a", (2, 32), F32, 256)])
        w.write(a[:1]); w.write(a[1:]); w.end_tensor(); w.close()
    """

    def __init__(self, f: BinaryIO, kvs: Sequence[KV], tensors: Sequence[TensorInfo],
                 alignment: int = DEFAULT_ALIGNMENT) -> None:
        if alignment <= 0 or alignment & (alignment - 1):
            raise PackError(f"alignment must be a power of two, got {alignment}")
        self._f, self._tensors, self._alignment = f, tuple(tensors), alignment
        self._index = self._received = self._pos = 0
        self._emit(memoryview(_encode_header(kvs, self._tensors, alignment)))
        self._pad()

    def write(self, chunk: npt.NDArray[Any] | bytes | memoryview) -> None:
        """Append raw bytes of the current tensor (numpy arrays as their little-endian bytes)."""
        if isinstance(chunk, np.ndarray):
            arr = np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder("<"))  # no copy if LE
            view = arr.reshape(-1).view(np.uint8).data  # a memoryview of the array's bytes
        else:
            view = memoryview(chunk).cast("B")
        t = self._current()
        if self._received + len(view) > t.nbytes:
            raise AssertionError(f"tensor {t.name!r}: got {self._received + len(view)} bytes, "
                                 f"expected {t.nbytes}")
        self._received += len(view)
        self._emit(view)

    def end_tensor(self) -> None:
        """Finish the current tensor: check its byte count, pad to the alignment."""
        t = self._current()
        if self._received != t.nbytes:
            raise AssertionError(f"tensor {t.name!r}: got {self._received} bytes, "
                                 f"expected {t.nbytes}")
        self._pad()
        self._index, self._received = self._index + 1, 0

    def close(self) -> None:
        """Check every tensor was written and flush `f` (which stays open)."""
        if self._index != len(self._tensors):
            missing = len(self._tensors) - self._index
            raise AssertionError(f"{missing} of {len(self._tensors)} tensors not written, "
                                 f"next is {self._tensors[self._index].name!r}")
        self._f.flush()

    # Misuse is a bug in bitconv, not bad input: AssertionError, raised even under `python -O`.
    def _current(self) -> TensorInfo:
        if self._index >= len(self._tensors):
            raise AssertionError("GGUFWriter: all tensors were already written")
        return self._tensors[self._index]

    def _emit(self, view: memoryview) -> None:
        self._f.write(view)
        self._pos += len(view)

    def _pad(self) -> None:
        self._emit(memoryview(bytes(-self._pos % self._alignment)))


def write_parts(w: GGUFWriter, group: list[TensorInfo], chunks: Iterator[npt.NDArray[Any]]) -> None:
    """Write byte chunks into the group's tensors in order, closing each when it is full
    (codecs never yield a chunk that straddles two parts)."""
    it = iter(group)
    part, done = next(it), 0
    for chunk in chunks:
        w.write(chunk)
        done += chunk.nbytes
        if done == part.nbytes:
            w.end_tensor()
            part, done = next(it, part), 0
    if done:
        raise PackError(f"{part.name}: codec wrote {done} of {part.nbytes} bytes")  # a codec bug
