"""The codec contract: what every packed GGUF layout declares about itself (FormatSpec), the GGUF
tensors one ternary weight becomes (Part), the typed Codec base every layout is an instance of,
and the checks all layouts share (shapes, codes, byte lengths), written once here.

A Codec is used by `pack`, `repack`, the readers, `inspect` and `verify`, which know nothing else
of a layout:

    spec                                    FormatSpec: name, ggml/file type ids, block geometry
    check_shape(shape) -> None              PackError if (out_features, in_features) cannot be packed
    nbytes(shape) -> int                    ggml_nbytes of one tensor of the layout's ggml type
    parts(name, shape) -> tuple[Part, ...]  the stored tensors one weight becomes, weight first
    encode(multiplier, chunks) -> Iterator[uint8 array]
                                            row chunks of int8 codes (row counts a multiple of
                                            spec.row_multiple) -> the bytes of every part in
                                            order; no yielded array straddles two parts
    decode(datas, shape, tiling) -> (codes, multiplier)
                                            the inverse, given each part's bytes in parts() order;
                                            InputError on malformed data. A `tiled` codec (TL1,
                                            TL2) needs the tiling the file was written with and
                                            refuses None; the others have none and ignore it
    sidecar(weights) -> (suffix, bytes) | None
                                            an extra file written next to the output (a kernel
                                            configuration), from [(name, shape)] of every weight
    kvs(arch, weights) -> list[KV]          metadata a file in this layout must carry to be read
                                            back by it (the layout key, a TL tiling key)
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, NoReturn

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats.tiling import Tiling
from bitconv.gguf_values import GGUFValueType
from bitconv.types import KV

U8 = npt.NDArray[np.uint8]
I8 = npt.NDArray[np.int8]
# (out_features, in_features), numpy order; typed loosely as readers hand it over (a GGUF
# tensor's shape), and checked to be 2-D by check_shape / check_in_features
Shape = tuple[int, ...]
Weights = Sequence[tuple[str, Shape]]  # (GGUF name, shape) of each ternary weight


@dataclass(frozen=True)
class FormatSpec:
    """Identity and geometry of one packed layout.

    name:         the `--format` value, the codec module's name, the spec's stem (formats/<name>.md).
    type_name:    the ggml type's name (I2_S, TQ2_0, ...), as error messages and `inspect` say it.
    ggml_type:    the ggml tensor type id written in GGUF tensor infos.
    file_type:    the `general.file_type` (llama ftype) a model packed in this layout carries.
    block_elems:  ternary elements per block; in_features must be a multiple of it.
    block_bytes:  packed bytes per block.
    tail_bytes:   bytes appended once per tensor after the blocks (e.g. a scale), 0 if none.
    row_multiple: rows per streamed chunk must be a multiple of this (row tiles), 1 if free.
    lossless:     every float32 multiplier survives exactly (False: e.g. an fp16 block scale).
    row_local:    encode(m, chunks) yields each chunk's blocks as it consumes it, depending on
                  that chunk alone, and then exactly what encode(m, []) yields (tail,
                  companions); `pack` then encodes chunks in parallel. False: TL tiles.
    codes:        the weight codes the layout holds: ternary, or (-1, 1) for binary (Q1_0).
    d_first:      an fp16-d block format (tq_common) stores d before the codes (Q2_0, Q1_0:
                  `{ ggml_half d; uint8_t qs[]; }`) rather than after them (TQ1_0, TQ2_0).
    """

    name: str
    type_name: str
    ggml_type: int
    file_type: int
    block_elems: int
    block_bytes: int
    tail_bytes: int
    row_multiple: int = 1
    lossless: bool = True
    row_local: bool = True
    codes: tuple[int, ...] = (-1, 0, 1)
    d_first: bool = False


@dataclass(frozen=True)
class Part:
    """One stored tensor that a packed ternary weight becomes: the weight itself (always first,
    under the weight's own name) and any companions, such as a separate F32 scale tensor."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order
    nbytes: int


class Codec(ABC):
    """One packed GGUF layout (see the module doc). Subclasses give encode and decode; the
    defaults below are what most layouts do: one tensor (no companion), whole blocks along
    in_features, no sidecar, no metadata of their own."""

    tiled: ClassVar[bool] = False  # decode needs the file's TL tiling
    layout: str | None = None  # the `{arch}.tensor_data_layout` value that marks the layout

    def __init__(self, spec: FormatSpec) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"<codec {self.spec.name}>"

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """PackError unless `shape` is (out_features, in_features) with whole blocks per row
        (the kernels start row r at byte r * in_features / block_elems * block_bytes)."""
        check_2d(self.spec, shape)
        if int(shape[1]) % self.spec.block_elems:
            raise PackError(f"{self.spec.name} needs in_features % {self.spec.block_elems} == 0, "
                            f"got {int(shape[1])}")

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of one tensor of `shape` (numpy order, any rank) as ggml_nbytes sizes the ggml
        type: n / block_elems * block_bytes + tail_bytes. The one source of the packed types'
        sizes: the GGUF reader and writer ask the codecs (containers/gguf_writer.py)."""
        return math.prod(shape) // self.spec.block_elems * self.spec.block_bytes \
            + self.spec.tail_bytes

    def parts(self, name: str, shape: Shape) -> tuple[Part, ...]:
        """One tensor: the weight, its scale (if any) inside its own bytes."""
        return (Part(name, self.spec.ggml_type, (int(shape[0]), int(shape[1])),
                     self.nbytes(shape)),)

    @abstractmethod
    def encode(self, multiplier: float | np.float32, chunks: Iterable[I8]) -> Iterator[U8]:
        """The bytes of every part, from the weight's row chunks of int8 codes."""

    @abstractmethod
    def decode(self, datas: Sequence[U8], shape: Shape,
               tiling: Tiling | None = None) -> tuple[I8, np.float32]:
        """(codes int8 `shape`, float32 multiplier) from each part's bytes in parts() order;
        `tiling`: the file's, for a `tiled` codec (which refuses None); others ignore it."""

    def sidecar(self, weights: Weights) -> tuple[str, bytes] | None:
        """An extra file beside the output: (suffix, bytes), or None (the default)."""
        return None

    def kvs(self, arch: str, weights: Weights = ()) -> list[KV]:
        """What a file written in this layout must carry to be read back by it: the layout key
        of a codec with a `layout` (formats/i2s-arm.md §1)."""
        if self.layout is None:
            return []
        return [KV(f"{arch}.tensor_data_layout", GGUFValueType.STRING, self.layout)]


# --- the checks every layout shares ---

def check_2d(layout: FormatSpec | str, shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise PackError(f"{_name_codes(layout)[0]} packs 2-D weights, got shape "
                        f"{tuple(int(d) for d in shape)}")


def _name_codes(layout: FormatSpec | str) -> tuple[str, tuple[int, ...]]:
    """(name, codes held) of a codec's spec, or of a ternary layout named by a string (hf)."""
    if isinstance(layout, str):
        return layout, (-1, 0, 1)
    return layout.name, layout.codes


def integer_codes(layout: FormatSpec | str, codes: npt.ArrayLike) -> npt.NDArray[np.integer]:
    """`codes` as an integer array (not yet range-checked), or PackError."""
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise PackError(f"{_name_codes(layout)[0]} codes must be an integer array, got dtype "
                        f"{arr.dtype}")
    return arr


def refuse_codes(layout: FormatSpec | str, codes: npt.NDArray[np.integer]) -> NoReturn:
    """PackError naming the first element the layout cannot hold: a value outside {-1, 0, +1}
    first, then (a binary layout, Q1_0) a 0. Only called once a cheap test has failed."""
    name, held = _name_codes(layout)
    flat = codes.reshape(-1)
    bad = (flat < -1) | (flat > 1)
    if bad.any():
        first = int(np.argmax(bad))
        raise PackError(f"{name} codes must be -1, 0 or +1, got {int(flat[first])} "
                        f"at element {first}")
    zero = flat == 0
    if 0 not in held and zero.any() and isinstance(layout, FormatSpec):
        first = int(np.argmax(zero))  # what the ggml type holds: q1_0 for both variants
        raise PackError(f"{layout.type_name.lower()} holds binary weights (-1 or +1); got 0 at "
                        f"element {first} (a ternary weight: use --format q2_0)")
    raise AssertionError(f"{name}: refuse_codes called on codes it holds")


def check_codes(layout: FormatSpec | str, codes: npt.ArrayLike) -> I8:
    """`codes` as contiguous int8 that `layout` holds, or PackError naming the first bad one."""
    arr = integer_codes(layout, codes)
    binary = 0 not in _name_codes(layout)[1]
    if arr.size and (arr.min() < -1 or arr.max() > 1 or (binary and not arr.all())):
        refuse_codes(layout, arr)
    return np.ascontiguousarray(arr, dtype=np.int8)


def check_length(spec: FormatSpec, data: npt.ArrayLike, shape: tuple[int, ...],
                 expected: int) -> U8:
    """`data` as flat uint8 of exactly `expected` bytes, or InputError."""
    arr = np.asarray(data, dtype=np.uint8).reshape(-1)
    if arr.size != expected:
        raise InputError(f"{spec.name} data is {arr.size} bytes, expected {expected} for shape "
                         f"{shape}")
    return arr


def check_in_features(spec: FormatSpec, shape: tuple[int, ...]) -> tuple[int, int]:
    """decode's shape check: (out, in) as ints, InputError unless whole blocks per row."""
    out = (int(shape[0]), int(shape[1]))
    if out[1] % spec.block_elems:
        raise InputError(f"{spec.name} needs in_features % {spec.block_elems} == 0, got {out[1]}")
    return out


def check_digits(spec: FormatSpec, q: npt.NDArray[np.uint8]) -> None:
    """InputError at the first 2-bit code 3 (no ternary value) in `q`, in element order."""
    if q.size and q.max() > 2:
        first = int(np.argmax(q.reshape(-1) > 2))
        raise InputError(f"{spec.name} data holds code 3 (not a ternary value) at element {first}")
