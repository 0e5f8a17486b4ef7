"""TQ2_0: llama.cpp's 2-bit ternary blocks (ggml type 35), 256 elements -> 64 bytes + fp16 d.

Spec: formats/tq2_0.md. Reference: ggml-org/llama.cpp@0c1e57098 ggml/src/ggml-common.h L283-288
(block_tq2_0), ggml/src/ggml-quants.c L2382 (quantize_row_tq2_0_ref), L2467 (dequantize).

Two codecs live here:
    tq2_0       (`CODEC`) lossless: d = 1 in every block, the exact float32 multiplier in an
                F32 [1] companion `<name>.scale`, which llama.cpp multiplies in after the matmul
    tq2_0-fp16  (`FP16`) llama.cpp's standard form: d = fp16(multiplier) in every block, no
                companion; the multiplier read back is float32(fp16(m)), so SPEC.lossless=False
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from bitconv.formats import tq_common as tq
from bitconv.formats.base import FormatSpec
from bitconv.gguf_values import GGMLType

SPEC = FormatSpec(name="tq2_0", type_name="TQ2_0", ggml_type=GGMLType.TQ2_0, file_type=37,
                  block_elems=256, block_bytes=66, tail_bytes=0)
SPEC_FP16 = replace(SPEC, name="tq2_0-fp16", lossless=False)

# One block of 256 digits q = ternary + 1 -> qs[64], then d (fp16 LE). Two halves j of 128;
# byte m (0..31) of half j holds elements 128j + m + 32l at bit shift 2l:
#   bit   7 6          | 5 4          | 3 2          | 1 0
#         q[128j+m+96] | q[128j+m+64] | q[128j+m+32] | q[128j+m]
# element e -> byte (e // 128) * 32 + e % 32, shift 2 * ((e % 128) // 32). Code 3 never written.
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)  # shift of group l


def pack_qs(q: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n_blocks, 256) digits 0..2 -> (n_blocks, 64) qs bytes. Digits never carry into the next
    byte (<= 2 << 6), so each group's 32 bytes combine as four 64-bit words at once."""
    g = np.ascontiguousarray(q).view(np.uint64).reshape(-1, 2, 4, 4)  # (n, half j, group l, word)
    qs = g[:, :, 0] | (g[:, :, 1] << 2)
    qs |= g[:, :, 2] << 4
    qs |= g[:, :, 3] << 6
    return qs.view(np.uint8).reshape(-1, 64)


def unpack_qs(qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n_blocks, 64) qs bytes -> (n_blocks, 256) digits 0..3, element order."""
    q = (qs.reshape(-1, 2, 1, 32) >> _SHIFTS) & np.uint8(3)  # (n_blocks, j, l, m): 128j+32l+m
    return q.reshape(-1, 256)


def pack(codes: npt.NDArray[np.int8], d: float = 1.0) -> npt.NDArray[np.uint8]:
    """Pack ternary codes (rows, K), K % 256 == 0, into TQ2_0 blocks that all carry fp16(d).

    Example:
        >>> pack(np.zeros((1, 256), np.int8))[[0, 63, 64, 65]].tobytes().hex()
        '5555003c'
    """
    return CODEC.pack_rows(codes, tq.fp16_d(SPEC_FP16, d))


def unpack(data: npt.NDArray[np.uint8],
           shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float16]]:
    """TQ2_0 bytes -> (int8 codes of `shape`, each block's d as fp16); InputError on code 3."""
    codes, d_bits = CODEC.unpack_rows(data, shape)
    return codes, d_bits.view(np.float16)


CODEC = tq.Blocks(SPEC, pack_qs, unpack_qs)    # registered as "tq2_0"
FP16 = tq.Blocks(SPEC_FP16, pack_qs, unpack_qs)  # registered as "tq2_0-fp16"
