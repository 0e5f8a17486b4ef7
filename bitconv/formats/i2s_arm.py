"""I2_S, ARM layout: bitnet.cpp's I2_S as its NEON builds read it since 2025-11 (64-element blocks).

Spec: formats/i2s-arm.md. Reference: microsoft/BitNet@16da220:src/ggml-bitnet-mad.cpp
(`#define QK_I2_S 64` under __ARM_NEON; quantize_i2_s ARM branch L151-195; NEON vec_dot reading
16 bytes per block, `x + i*32*16 + j*16`). Same ggml type (36), file type (40), tensor size
(n/4 + 32) and tail as x86 I2_S (formats/i2s.md): only the order of the 2-bit codes differs, and
nothing in a bitnet.cpp file says which order it holds. bitconv marks its files with the GGUF
key `{arch}.tensor_data_layout` = "i2s-arm" (LAYOUT) and reads a file as this layout only then.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitconv.formats import i2s
from bitconv.formats.base import (
    FormatSpec,
    check_codes,
    check_digits,
    check_in_features,
    check_length,
)
from bitconv.gguf_values import GGMLType

SPEC = FormatSpec(name="i2s-arm", type_name="I2_S", ggml_type=GGMLType.I2_S, file_type=40,
                  block_elems=64, block_bytes=16, tail_bytes=32)
LAYOUT = "i2s-arm"  # value of `{arch}.tensor_data_layout` in files bitconv writes

# The tensor (out, in), flattened row-major, is cut into 64-element blocks; each -> 16 bytes.
# Byte b of a block holds elements b, b+16, b+32, b+48; element j sits in byte j % 16 at bit
# shift 6 - 2*(j // 16):
#   bit   7 6  | 5 4     | 3 2     | 1 0
#         e[b] | e[b+16] | e[b+32] | e[b+48]
# code = ternary + 1; then the same 32-byte tail as x86 I2_S (float32 LE multiplier, 28 zeros).
_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)  # shift of group g, (1, 4, 1)


def pack_body(codes: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]:
    """Pack ternary codes (rows, K), K % 64 == 0, into rows*K//4 body bytes (no tail); any
    whole-row chunk packs independently."""
    codes = np.asarray(codes)
    CODEC.check_shape(codes.shape)  # the NEON kernels start row r at byte r * K/4
    # int8 -1 viewed as uint8 is 255, and 255 + 1 wraps to 0
    q = check_codes(SPEC, codes).view(np.uint8) + np.uint8(1)
    q = q.reshape(-1, 4, 16)                    # (n_blocks, group g, byte b): element 16g + b
    body = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]   # (n_blocks, 16)
    return body.reshape(-1).astype(np.uint8, copy=False)


def pack(codes: npt.NDArray[np.int8], multiplier: float | np.float32) -> npt.NDArray[np.uint8]:
    """Pack one ternary tensor as ARM I2_S tensor data (nbytes(codes.shape) bytes).

    Example:
        >>> pack(np.ones((1, 64), np.int8), 0.5)[:2].tobytes().hex()
        'aaaa'
    """
    return np.concatenate([pack_body(codes), i2s.pack_tail(multiplier)])


def unpack(data: npt.NDArray[np.uint8],
           shape: tuple[int, ...]) -> tuple[npt.NDArray[np.int8], np.float32]:
    """Decode ARM I2_S tensor data into (codes int8 `shape`, float32 multiplier)."""
    shape = check_in_features(SPEC, shape)
    expected = CODEC.nbytes(shape)
    data = check_length(SPEC, data, shape, expected)
    n_body = expected - SPEC.tail_bytes
    body = data[:n_body].reshape(-1, 1, 16)                 # (n_blocks, 1, 16)
    q = (body >> _SHIFTS) & np.uint8(3)                      # (n_blocks, g, b) = element 16g + b
    check_digits(SPEC, q)
    q -= 1                                                   # 0 wraps to 255, i.e. int8 -1
    return q.view(np.int8).reshape(shape), i2s.read_tail(data, n_body)


# same sizes, tail and streaming as x86 I2_S; only the order of the codes (and the key) differ
CODEC = i2s.I2S(SPEC, pack_body, unpack, layout=LAYOUT)
