"""Q2_0: llama.cpp mainline's 2-bit blocks (ggml type 42), 64 elements -> fp16 d + 16 bytes.

Spec: formats/q2_0.md. Reference: ggml-org/llama.cpp@0c1e57098 ggml/src/ggml-common.h L187-192
(block_q2_0), ggml/src/ggml-quants.c L74-110 (quantize_row_q2_0_ref), L439-456 (dequantize).

A Q2_0 value is (q - 1)·d for q in 0..3; a ternary weight uses q = t + 1 in 0..2 (3 = +2d is
never written, and refused when read). Two codecs live here, as for TQ2_0:
    q2_0       (`CODEC`) lossless: d = 1 in every block, the exact float32 multiplier in an
               F32 [1] companion `<name>.scale` that llama.cpp multiplies in after the matmul
    q2_0-fp16  (`FP16`) llama.cpp's own form: d = fp16(multiplier) in every block, no companion;
               reads back float32(fp16(m)), so SPEC.lossless=False
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from bitconv.formats import tq_common as tq
from bitconv.formats.base import FormatSpec
from bitconv.gguf_values import GGMLType

QK2_0 = 64  # elements per block (ggml-common.h L187)
SPEC = FormatSpec(name="q2_0", type_name="Q2_0", ggml_type=GGMLType.Q2_0, file_type=41,
                  block_elems=QK2_0, block_bytes=18, tail_bytes=0, d_first=True)
SPEC_FP16 = replace(SPEC, name="q2_0-fp16", lossless=False)

# One block of 64 digits q -> d (fp16 LE) then qs[16]; element j in byte j // 4 at shift
# 2·(j % 4), lowest bits first:
#   qs[b] =  bit  7 6        5 4        3 2        1 0
#                 q[4b+3]    q[4b+2]    q[4b+1]    q[4b]
# Four consecutive digits read as one little-endian uint32 w = q0 | q1<<8 | q2<<16 | q3<<24.
# w·(2^6 + 2^12 + 2^18 + 2^24) puts q0 + q1<<2 + q2<<4 + q3<<6 in its top byte: the partial
# products below bit 24 sum to < 2^24 for digits <= 3, so nothing carries into it.
_GATHER = np.uint32((1 << 6) | (1 << 12) | (1 << 18) | (1 << 24))
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)


def pack_qs(q: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n_blocks, 64) digits 0..2 -> (n_blocks, 16) qs bytes."""
    w = np.ascontiguousarray(q).view("<u4") * _GATHER   # (n_blocks, 16) words, wrapping
    return w.view(np.uint8).reshape(-1, 16, 4)[:, :, 3]


def unpack_qs(qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n_blocks, 16) qs bytes -> (n_blocks, 64) digits 0..3, element order."""
    return ((qs[:, :, None] >> _SHIFTS) & np.uint8(3)).reshape(-1, QK2_0)


def pack(codes: npt.NDArray[np.int8], d: float = 1.0) -> npt.NDArray[np.uint8]:
    """Pack ternary codes (rows, K), K % 64 == 0, into Q2_0 blocks that all carry fp16(d).

    Example:
        >>> pack(np.zeros((1, 64), np.int8))[[0, 1, 2, 17]].tobytes().hex()
        '003c5555'
    """
    return CODEC.pack_rows(codes, tq.fp16_d(SPEC_FP16, d))


def unpack(data: npt.NDArray[np.uint8],
           shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float16]]:
    """Q2_0 bytes -> (int8 codes of `shape`, each block's d as fp16); InputError on code 3."""
    codes, d_bits = CODEC.unpack_rows(data, shape)
    return codes, d_bits.view(np.float16)


CODEC = tq.Blocks(SPEC, pack_qs, unpack_qs)    # registered as "q2_0"
FP16 = tq.Blocks(SPEC_FP16, pack_qs, unpack_qs)  # registered as "q2_0-fp16"
