"""I2_S: ternary weights at 2 bits, in the x86 layout of bitnet.cpp (the de-facto file format).

Spec: formats/i2s.md. Reference: microsoft/BitNet@16da220:src/ggml-bitnet-mad.cpp L53-96
(quantize_i2_s, ACT_PARALLEL branch). Type ids: Eddie-Wang1120/llama.cpp@406a503
ggml/include/ggml.h L393-396 and include/llama.h L176-181.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from bitconv.formats.base import (
    I8,
    U8,
    Codec,
    FormatSpec,
    Shape,
    check_codes,
    check_digits,
    check_in_features,
    check_length,
    integer_codes,
    refuse_codes,
)
from bitconv.formats.tiling import Tiling
from bitconv.gguf_values import GGMLType

SPEC = FormatSpec(name="i2s", type_name="I2_S", ggml_type=GGMLType.I2_S, file_type=40,
                  block_elems=128, block_bytes=32, tail_bytes=32)

# The tensor (out, in), flattened row-major, is cut into 128-element blocks; each -> 32 bytes.
# Byte b of a block holds elements b, b+32, b+64, b+96; element j of a block sits in
# byte j % 32 at bit shift 6 - 2*(j // 32):
#   bit   7 6  | 5 4     | 3 2     | 1 0
#         e[b] | e[b+32] | e[b+64] | e[b+96]
# code = ternary + 1: -1 -> 0, 0 -> 1, +1 -> 2; code 3 is never written.
# After the n/4 body bytes comes a 32-byte tail: float32 LE multiplier, then 28 zero bytes.
_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)  # shift of group g, (1, 4, 1)


class I2S(Codec):
    """bitnet.cpp's I2_S in one of its two code orders (this module's x86 blocks, or i2s-arm's):
    n/4 body bytes of 2-bit codes, then the 32-byte scale tail; one tensor, row-local."""

    def __init__(self, spec: FormatSpec, pack_body: Callable[[I8], U8],
                 unpack: Callable[[U8, Shape], tuple[I8, np.float32]],
                 layout: str | None = None) -> None:
        super().__init__(spec)
        self._pack_body, self._unpack, self.layout = pack_body, unpack, layout

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """n/4 body bytes + the 32-byte tail, whatever n (ggml_nbytes' I2_S special case)."""
        return math.prod(shape) // 4 + self.spec.tail_bytes

    def encode(self, multiplier: float | np.float32, chunks: Iterable[I8]) -> Iterator[U8]:
        for c in chunks:
            yield self._pack_body(c)
        yield pack_tail(multiplier)

    def decode(self, datas: Sequence[U8], shape: Shape,
               tiling: Tiling | None = None) -> tuple[I8, np.float32]:
        return self._unpack(datas[0], shape)


def _pack_into(given: npt.ArrayLike, out: npt.NDArray[np.uint8]) -> None:
    """Pack whole rows of codes `given` into `out` (length size // 4)."""
    codes = np.asarray(given)
    CODEC.check_shape(codes.shape)
    codes = integer_codes(SPEC, codes)
    if codes.dtype != np.int8:  # else range-checked below, in the packing loop
        codes = check_codes(SPEC, codes)
    flat = np.ascontiguousarray(codes).reshape(-1).view(np.uint8)
    # Bytes never carry into each other (code <= 2, shift <= 6), so the four groups of a block
    # combine as 64-bit words: 8 bytes per operation instead of 1.
    body = out.view(np.uint64).reshape(-1, 4)  # (blocks, 32 bytes as 4 words)
    step = 1 << 18  # elements per step (a multiple of 128): the temporaries stay in cache
    for a in range(0, flat.size, step):
        # codes + 1 as uint8: int8 -1 viewed as uint8 is 255, and 255 + 1 wraps to 0.
        q = flat[a:a + step] + np.uint8(1)
        # One cheap reduction: a value outside {-1, 0, 1} would otherwise pack silently as
        # code 3 or spill into its neighbours' bits.
        if q.max() > 2:
            refuse_codes(SPEC, codes)
        q = q.view(np.uint64).reshape(-1, 4, 4)  # (blocks, group g, word): elements 32g..32g+31
        dst = body[a // 128:(a + step) // 128]
        np.left_shift(q[:, 0], 6, out=dst)
        dst |= q[:, 1] << 4
        dst |= q[:, 2] << 2
        dst |= q[:, 3]


def pack_body(codes: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]:
    """Pack ternary codes (rows, K), K % 128 == 0, into rows*K//4 body bytes, without the tail.

    Any whole-row chunk packs independently, so a large tensor can be streamed:
    `pack(w, m) == concat(pack_body(w[a:b]) for each chunk) + pack_tail(m)`.
    """
    out = np.empty(np.asarray(codes).size // 4, dtype=np.uint8)
    _pack_into(codes, out)
    return out


def pack_tail(multiplier: float | np.float32) -> npt.NDArray[np.uint8]:
    """The 32-byte tail: the per-tensor multiplier as float32 little-endian, then 28 zero bytes."""
    tail = np.zeros(SPEC.tail_bytes, dtype=np.uint8)
    tail[:4] = np.array([multiplier], dtype="<f4").view(np.uint8)
    return tail


def pack(codes: npt.NDArray[np.int8], multiplier: float | np.float32) -> npt.NDArray[np.uint8]:
    """Pack one ternary tensor as I2_S tensor data.

    Args:
        codes: int8 (out_features, in_features), values in {-1, 0, +1}, in_features % 128 == 0.
        multiplier: the per-tensor scale, w = multiplier * codes.

    Returns:
        uint8 array of length nbytes(codes.shape): the packed blocks, then the tail.

    Example:
        >>> pack(np.ones((1, 128), np.int8), 0.5)[:2].tobytes().hex()
        'aaaa'
    """
    shape = np.shape(codes)
    CODEC.check_shape(shape)
    data = np.empty(CODEC.nbytes(shape), dtype=np.uint8)
    n_body = data.size - SPEC.tail_bytes
    _pack_into(codes, data[:n_body])         # written in place: no concatenate copy of the body
    data[n_body:] = pack_tail(multiplier)
    return data


def unpack(
    data: npt.NDArray[np.uint8], shape: tuple[int, ...]
) -> tuple[npt.NDArray[np.int8], np.float32]:
    """Decode I2_S tensor data back into ternary codes and the multiplier.

    Args:
        data: the tensor's bytes, exactly nbytes(shape) long; may be a read-only memmap.
        shape: (out_features, in_features), numpy order (GGUF ne0 = in_features).

    Returns:
        (codes, multiplier): a new int8 array of `shape` in {-1, 0, +1}, and the float32 multiplier.

    Example:
        >>> unpack(pack(np.ones((1, 128), np.int8), 0.5), (1, 128))[1]
        np.float32(0.5)
    """
    shape = check_in_features(SPEC, shape)
    expected = CODEC.nbytes(shape)
    data = check_length(SPEC, data, shape, expected)
    n_body = expected - SPEC.tail_bytes
    body = data[:n_body].reshape(-1, 1, 32)                 # (n_blocks, 1, 32)
    q = np.empty((body.shape[0], 4, 32), dtype=np.uint8)   # (n_blocks, g, b) = element 32g + b
    np.right_shift(body, _SHIFTS, out=q)
    q &= 3
    check_digits(SPEC, q)  # q is in flat element order
    q -= 1                                                   # 0 wraps to 255, i.e. int8 -1
    return q.view(np.int8).reshape(shape), read_tail(data, n_body)


def read_tail(data: npt.NDArray[np.uint8], offset: int) -> np.float32:
    """The multiplier of a 32-byte tail starting at `offset` (the 28 bytes after it are
    don't-care to every reader, DESIGN.md §5b)."""
    return np.float32(np.frombuffer(data[offset:offset + 4].tobytes(), dtype="<f4")[0])


CODEC = I2S(SPEC, pack_body, unpack)
