"""GGUF v3 header reader that knows bitnet.cpp's types (I2_S = 36, TL1 = 38, TL2 = 39).

Stock gguf-py refuses type 36, and n/4 + 32 bytes fits none of its (block_size, type_size) pairs,
so bitconv reads the header itself; the layout is drawn in gguf_writer.py. Byte sizes come from
`tensor_nbytes`, shared with the writer.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.gguf_writer import (
    _ARRAY_DTYPES,
    _NP_DTYPES,
    _SCALAR_FMT,
    _U64,
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MAX_DIMS,
    TYPE_NAMES,
    _first_duplicate,
    _pad_to,
    tensor_nbytes,
)
from bitconv.errors import InputError
from bitconv.gguf_values import GGUFValueType
from bitconv.types import KV

_V = GGUFValueType

@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order
    offset: int  # absolute file offset
    nbytes: int


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF header. KV values: str, bool, int, float; string arrays as list[str];
    numeric and bool arrays as read-only 1-D numpy arrays; arrays of arrays as lists."""

    path: Path
    version: int
    alignment: int
    kvs: dict[str, Any]
    kv_types: dict[str, GGUFValueType]  # ARRAY for arrays; the element type is the numpy dtype
    tensors: tuple[GGUFTensor, ...]
    data_offset: int
    file_size: int


class _Truncated(Exception):
    pass


class _Header:
    """A cursor over the mmapped file; reading past the end raises _Truncated or struct.error."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _Truncated
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def string(self) -> str:
        return self.raw(self.unpack("<Q")[0]).decode("utf-8")

    def value(self, vtype: int, key: str) -> Any:
        if vtype == _V.STRING:
            return self.string()
        if vtype == _V.ARRAY:
            return self.array(key)
        return self.unpack(_SCALAR_FMT[self.vtype(vtype, key)])[0]

    def array(self, key: str) -> Any:
        subtype, count = self.unpack("<IQ")
        if subtype == _V.STRING:
            return self.strings(count)
        if subtype == _V.ARRAY:
            return [self.array(key) for _ in range(count)]
        dtype = _NP_DTYPES[self.vtype(subtype, key)]
        return np.frombuffer(self.raw(count * dtype.itemsize), dtype=dtype)  # read-only, owns bytes

    def vtype(self, vtype: int, key: str) -> GGUFValueType:
        if vtype not in _SCALAR_FMT:
            raise InputError(f"{self.path}: unknown GGUF value type {vtype} in KV {key!r}")
        return GGUFValueType(vtype)

    def strings(self, count: int) -> list[str]:
        # Inlined loop: a 128k-entry token list decodes in well under a second.
        buf, pos, size, out = self.buf, self.pos, len(self.buf), []
        for _ in range(count):
            (n,) = _U64.unpack_from(buf, pos)
            if pos + 8 + n > size:
                raise _Truncated
            out.append(buf[pos + 8:pos + 8 + n].decode("utf-8"))
            pos += 8 + n
        self.pos = pos
        return out

    def tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string()
        (n_dims,) = self.unpack("<I")
        if n_dims > MAX_DIMS:
            raise InputError(f"{self.path}: tensor {name!r} has {n_dims} dims, GGUF allows 4")
        dims = self.unpack(f"<{n_dims}Q")
        ggml_type, offset = self.unpack("<IQ")
        return name, tuple(reversed(dims)), ggml_type, offset


def read_gguf(path: str | Path) -> GGUFFile:
    """Read and check a GGUF header (tensor data is not read; see `tensor_bytes`).

    Every tensor's size is derived with `tensor_nbytes` (I2_S/TL1/TL2 aware) from its type and
    shape. Its offset may be any multiple of general.alignment (ggml docs/gguf.md,
    gguf_tensor_info_t.offset: "Must be a multiple of ALIGNMENT"; the specification asks nothing
    else): tensor data in another order than the infos, and gaps between tensors, are read, as
    gguf-py's GGUFReader and bitnet.cpp's ggml (gguf_init_from_file points each tensor at
    data + offset) read them. Mainline llama.cpp's gguf.cpp is stricter since its 2025 rewrite:
    it wants the running padded sum ("tensor '...' has offset ..., expected ...", gguf.cpp:795 in
    llama-cpp-python 0.3.36), which is what bitconv writes. Refused, naming the tensor: a
    misaligned offset, data past the end of the file, two tensors sharing bytes.
    Raises InputError with a one-line message on any malformed or truncated file; an OSError
    (unreadable path) is left to the caller (the CLI shows it as one line, exit 1).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise InputError(f"{path}: not a GGUF file (bad magic)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                h = _Header(buf, path)
                h.pos = 4
                return _parse(h, len(buf))
    except (_Truncated, struct.error):
        raise InputError(f"{path}: truncated GGUF header") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: invalid UTF-8 in GGUF header") from None
    except RecursionError:  # arrays of arrays of ...: each level costs only 12 bytes
        raise InputError(f"{path}: GGUF metadata arrays nested too deeply") from None


def _parse(h: _Header, size: int) -> GGUFFile:
    path = h.path
    (version,) = h.unpack("<I")
    if version > 0xFFFF and version & 0xFFFF == 0:  # a small number in the wrong byte order
        raise InputError(f"{path}: big-endian GGUF files are not supported")
    if version not in (2, 3):  # v2 and v3 share this layout; v3 only added big-endian files
        raise InputError(f"{path}: unsupported GGUF version {version} "
                         f"(bitconv reads versions 2 and 3)")
    n_tensors, n_kv = h.unpack("<QQ")
    kvs: dict[str, Any] = {}
    kv_types: dict[str, GGUFValueType] = {}
    for _ in range(n_kv):
        key = h.string()
        (vtype,) = h.unpack("<I")
        if key in kvs:
            raise InputError(f"{path}: duplicate KV key {key!r}")
        kvs[key] = h.value(vtype, key)
        kv_types[key] = GGUFValueType(vtype)
    alignment = kvs.get("general.alignment", DEFAULT_ALIGNMENT)
    if (kv_types.get("general.alignment", _V.UINT32) != _V.UINT32
            or alignment <= 0 or alignment & (alignment - 1)):
        raise InputError(f"{path}: general.alignment must be a power-of-two UINT32, "
                         f"got {alignment!r}")
    infos = [h.tensor_info() for _ in range(n_tensors)]
    data_offset = _pad_to(h.pos, alignment)
    if (dup := _first_duplicate(name for name, *_ in infos)) is not None:
        raise InputError(f"{path}: duplicate tensor name {dup!r}")
    tensors: list[GGUFTensor] = []
    for name, shape, ggml_type, offset in infos:
        try:
            nbytes = tensor_nbytes(ggml_type, shape)
        except InputError as e:
            raise InputError(f"{path}: tensor {name!r}: {e}") from None
        if offset % alignment:
            raise InputError(f"{path}: tensor {name!r} has offset {offset}, not a multiple of "
                             f"general.alignment {alignment}")
        end = data_offset + offset + nbytes
        if end > size:
            raise InputError(f"{path}: truncated: tensor {name!r} ends at byte {end}, "
                             f"file has {size}")
        tensors.append(GGUFTensor(name, ggml_type, shape, data_offset + offset, nbytes))
    _check_disjoint(path, tensors, data_offset)
    _check_standard_kvs(path, kvs, kv_types)
    return GGUFFile(path, version, alignment, kvs, kv_types, tuple(tensors), data_offset, size)


# The standardized keys bitconv and the runtimes read, with the value each must hold (ggml
# docs/gguf.md "Standardized key-value pairs": counts are uint32/uint64, epsilons and bases
# float32, token lists arrays of strings, token ids uint32). Counts of any integer width are
# taken, as gguf-py reads them; llama.cpp also allows per-layer arrays for these three.
_COUNTS = ("context_length", "embedding_length", "block_count", "feed_forward_length",
           "attention.head_count", "attention.head_count_kv", "rope.dimension_count",
           "vocab_size", "attention.key_length", "attention.value_length")
_PER_LAYER = ("feed_forward_length", "attention.head_count", "attention.head_count_kv")
_FLOATS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base",
           "rope.scaling.factor")
_INTS = frozenset({_V.UINT8, _V.INT8, _V.UINT16, _V.INT16, _V.UINT32, _V.INT32, _V.UINT64,
                   _V.INT64})
_STRINGS = ("general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.chat_template")
_FLAGS = ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
          "tokenizer.ggml.add_space_prefix")


def _check_standard_kvs(path: Path, kvs: dict[str, Any], types: dict[str, GGUFValueType]) -> None:
    """Each standardized key present holds its kind of value (one line naming the key), so a
    runtime reading it never meets a string where it divides by a head count."""
    def bad(key: str, what: str) -> InputError:
        v = kvs[key]
        shown = (f"{types[key].name} {v!r}" if not isinstance(v, (list, np.ndarray))
                 else f"an ARRAY of {len(v)}")
        return InputError(f"{path}: metadata {key} must be {what}, got {shown[:60]}")

    def count(key: str, v: Any) -> bool:
        return types[key] in _INTS and 0 < int(v) < 2**31

    for key in _STRINGS:
        if key in kvs and types[key] != _V.STRING:
            raise bad(key, "a string")
    for key in _FLAGS:
        if key in kvs and types[key] != _V.BOOL:
            raise bad(key, "true or false")
    arch = kvs.get("general.architecture")
    for suffix in _COUNTS if isinstance(arch, str) else ():
        key = f"{arch}.{suffix}"
        if key not in kvs:
            continue
        v = kvs[key]
        per_layer = (suffix in _PER_LAYER and isinstance(v, np.ndarray) and v.dtype.kind in "iu"
                     and len(v) and v.min() > 0 and v.max() < 2**31)
        if not (per_layer or (types[key] != _V.ARRAY and count(key, v))):
            raise bad(key, "a positive integer")
    for suffix in _FLOATS if isinstance(arch, str) else ():
        key = f"{arch}.{suffix}"
        if key in kvs and not (types[key] in (_V.FLOAT32, _V.FLOAT64) and np.isfinite(kvs[key])
                               and kvs[key] >= (0 if "epsilon" in suffix else 1e-30)):
            raise bad(key, "a finite float" + (" >= 0" if "epsilon" in suffix else " > 0"))
    tokens = kvs.get("tokenizer.ggml.tokens")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        if key in kvs and not (types[key] == _V.ARRAY and isinstance(kvs[key], list)
                               and all(isinstance(t, str) for t in kvs[key])):
            raise bad(key, "an array of strings")
    n = len(tokens) if tokens is not None else None
    for key, kinds in (("tokenizer.ggml.token_type", "iu"), ("tokenizer.ggml.scores", "f")):
        v = kvs.get(key)
        if key in kvs and not (isinstance(v, np.ndarray) and v.dtype.kind in kinds
                               and (n is None or len(v) == n)):
            raise bad(key, f"an array of {'integers' if kinds == 'iu' else 'floats'}, one per "
                           f"token ({n} tokens)")
    for key, v in kvs.items():
        if (key.startswith("tokenizer.ggml.") and key.endswith("_token_id")
                and not (types[key] in _INTS and 0 <= int(v) and (n is None or int(v) < n))):
            raise bad(key, "a token id" + (f" below {n}" if n is not None else ""))


def _check_disjoint(path: Path, tensors: list[GGUFTensor], data_offset: int) -> None:
    """No byte belongs to two tensors (in any order; gaps are allowed)."""
    prev = None
    for t in sorted((t for t in tensors if t.nbytes), key=lambda t: t.offset):
        if prev is not None and t.offset < prev.offset + prev.nbytes:
            raise InputError(f"{path}: tensors {prev.name!r} and {t.name!r} overlap (data "
                             f"offsets {prev.offset - data_offset} + {prev.nbytes} bytes > "
                             f"{t.offset - data_offset})")
        prev = t


def tensor_bytes(gf: GGUFFile, t: GGUFTensor) -> npt.NDArray[np.uint8]:
    """A read-only uint8 memmap of one tensor's bytes (nothing is read until it is used)."""
    if t.nbytes == 0:
        empty = np.zeros(0, np.uint8)
        empty.flags.writeable = False
        return empty
    return np.memmap(gf.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.nbytes,))


def tensor_array(gf: GGUFFile, t: GGUFTensor) -> npt.NDArray[Any]:
    """A read-only typed view of an F32, F16 or I8 tensor, in numpy order `t.shape`."""
    dtype = _ARRAY_DTYPES.get(t.ggml_type)
    if dtype is None:
        raise InputError(f"{gf.path}: tensor {t.name!r} is {TYPE_NAMES[t.ggml_type]}; "
                         f"only F32, F16 and I8 tensors can be read as arrays")
    return tensor_bytes(gf, t).view(dtype).reshape(t.shape)


_SUBTYPES = {dtype: vtype for vtype, dtype in _NP_DTYPES.items()}


def kv_records(gf: GGUFFile) -> list[KV]:
    """The header's metadata in file order, as the writer takes it back (`GGUFWriter`): every
    value re-encodes to the bytes it was read from. Arrays of arrays are refused (InputError)."""
    out = []
    for key, value in gf.kvs.items():
        vtype = gf.kv_types[key]
        if vtype != _V.ARRAY:
            out.append(KV(key, vtype, value))
        elif isinstance(value, np.ndarray):
            out.append(KV(key, vtype, value, _SUBTYPES[value.dtype]))
        elif all(isinstance(v, str) for v in value):
            out.append(KV(key, vtype, value, _V.STRING))
        else:
            raise InputError(f"{gf.path}: KV {key!r} is an array of arrays, which bitconv "
                             "cannot rewrite")
    return out
