"""I2_S: ternary weights at 2 bits, in the x86 layout of bitnet.cpp (the de-facto file format).

Spec: formats/i2s.md. Reference: microsoft/BitNet@16da220:src/ggml-bitnet-mad.cpp L53-96
(quantize_i2_s, ACT_PARALLEL branch). Type ids: Eddie-Wang1120/llama.cpp@406a503
ggml/include/ggml.h L393-396 and include/llama.h L176-181.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats.base import FormatSpec, Part

SPEC = FormatSpec(
    name="i2s", ggml_type=36, file_type=40, block_elems=128, block_bytes=32, tail_bytes=32
)

# The tensor (out, in), flattened row-major, is cut into 128-element blocks; each -> 32 bytes.
# Byte b of a block holds elements b, b+32, b+64, b+96; element j of a block sits in
# byte j % 32 at bit shift 6 - 2*(j // 32):
#   bit   7 6  | 5 4     | 3 2     | 1 0
#         e[b] | e[b+32] | e[b+64] | e[b+96]
# code = ternary + 1: -1 -> 0, 0 -> 1, +1 -> 2; code 3 is never written.
# After the n/4 body bytes comes a 32-byte tail: float32 LE multiplier, then 28 zero bytes.
_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)  # shift of group g, (1, 4, 1)


def check_shape(shape: tuple[int, int]) -> None:
    """Raise PackError unless `shape` (out_features, in_features) can be written as I2_S."""
    if len(shape) != 2:
        raise PackError(f"i2s packs 2-D weights, got shape {tuple(int(d) for d in shape)}")
    # Blocks run over the flattened tensor; they only line up with rows (which is what the
    # kernels assume, row start = row * K/4) when K is a whole number of blocks.
    in_features = int(shape[1])
    if in_features % SPEC.block_elems:
        raise PackError(f"i2s needs in_features % 128 == 0, got {in_features}")


def nbytes(shape: tuple[int, int]) -> int:
    """Packed size: n/4 body bytes + the 32-byte tail (ggml_nbytes' I2_S special case)."""
    return int(shape[0]) * int(shape[1]) // 4 + SPEC.tail_bytes


def _pack_into(codes: npt.NDArray[np.int8], out: npt.NDArray[np.uint8]) -> None:
    """Pack whole rows of `codes` into `out` (length codes.size // 4)."""
    codes = np.asarray(codes)
    check_shape(codes.shape)
    if codes.dtype.kind not in "iu":
        raise PackError(f"i2s codes must be an integer array, got dtype {codes.dtype}")
    if codes.dtype != np.int8:
        if codes.size and (codes.min() < -1 or codes.max() > 1):
            _raise_not_ternary(codes)
        codes = codes.astype(np.int8)
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
            _raise_not_ternary(codes)
        q = q.view(np.uint64).reshape(-1, 4, 4)  # (blocks, group g, word): elements 32g..32g+31
        dst = body[a // 128:(a + step) // 128]
        np.left_shift(q[:, 0], 6, out=dst)
        dst |= q[:, 1] << 4
        dst |= q[:, 2] << 2
        dst |= q[:, 3]


def _raise_not_ternary(codes: npt.NDArray[np.integer]) -> None:
    flat = codes.reshape(-1)
    first = int(np.argmax((flat < -1) | (flat > 1)))
    value = int(flat[first])
    raise PackError(f"i2s codes must be -1, 0 or +1, got {value} at element {first}")


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
    check_shape(shape)
    data = np.empty(nbytes(shape), dtype=np.uint8)
    n_body = data.size - SPEC.tail_bytes
    _pack_into(codes, data[:n_body])         # written in place: no concatenate copy of the body
    data[n_body:] = pack_tail(multiplier)
    return data


def unpack(
    data: npt.NDArray[np.uint8], shape: tuple[int, int]
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
    shape = (int(shape[0]), int(shape[1]))
    if shape[1] % SPEC.block_elems:
        raise InputError(f"i2s needs in_features % 128 == 0, got {shape[1]}")
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    expected = nbytes(shape)
    if data.size != expected:
        raise InputError(f"i2s data is {data.size} bytes, expected {expected} for shape {shape}")
    n_body = expected - SPEC.tail_bytes
    body = data[:n_body].reshape(-1, 1, 32)                 # (n_blocks, 1, 32)
    q = np.empty((body.shape[0], 4, 32), dtype=np.uint8)   # (n_blocks, g, b) = element 32g + b
    np.right_shift(body, _SHIFTS, out=q)
    q &= 3
    if q.size and q.max() > 2:
        # q is in flat element order, so the first 3 in it is the first offending element.
        first = int(np.argmax(q.reshape(-1) == 3))
        raise InputError(f"i2s data holds code 3 (not a ternary value) at element {first}")
    q -= 1                                                   # 0 wraps to 255, i.e. int8 -1
    multiplier = np.frombuffer(data[n_body : n_body + 4].tobytes(), dtype="<f4")[0]
    return q.view(np.int8).reshape(shape), np.float32(multiplier)


# --- the registry contract (bitconv/formats/__init__.py) ---

def parts(name: str, shape: tuple[int, int]) -> tuple[Part, ...]:
    """I2_S is one tensor: the scale lives in the tail, never in a separate tensor."""
    return (Part(name, SPEC.ggml_type, (int(shape[0]), int(shape[1])), nbytes(shape)),)


def encode(multiplier: float | np.float32,
           chunks: Iterable[npt.NDArray[np.int8]]) -> Iterator[npt.NDArray[np.uint8]]:
    for c in chunks:
        yield pack_body(c)
    yield pack_tail(multiplier)


def decode(datas: Sequence[npt.NDArray[np.uint8]],
           shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], np.float32]:
    return unpack(datas[0], shape)


def sidecar(weights: Sequence[tuple[str, tuple[int, int]]]) -> tuple[str, bytes] | None:
    return None
