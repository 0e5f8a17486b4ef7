"""Q1_0: llama.cpp mainline's 1-bit blocks (ggml type 41), 128 elements -> fp16 d + 16 bytes.

Spec: formats/q1_0.md. Reference: ggml-org/llama.cpp@0c1e57098 ggml/src/ggml-common.h L180-185
(block_q1_0), ggml/src/ggml-quants.c L40-72 (quantize_row_q1_0_ref), L419-437 (dequantize).

A Q1_0 value is +d (bit 1) or -d (bit 0): binary weights, codes in {-1, +1}; a ternary weight's
0 has no bit and is refused (use q2_0). Two codecs, as for Q2_0:
    q1_0       (`CODEC`) lossless: d = 1 in every block + an F32 [1] `<name>.scale`
    q1_0-fp16  (`FP16`) d = fp16(multiplier) in every block; reads back float32(fp16(m))
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from bitconv.formats import tq_common as tq
from bitconv.formats.base import FormatSpec
from bitconv.gguf_values import GGMLType

QK1_0 = 128  # elements per block (ggml-common.h L180)
SPEC = FormatSpec(name="q1_0", type_name="Q1_0", ggml_type=GGMLType.Q1_0, file_type=40,
                  block_elems=QK1_0, block_bytes=18, tail_bytes=0, codes=(-1, 1), d_first=True)
SPEC_FP16 = replace(SPEC, name="q1_0-fp16", lossless=False)

# One block of 128 signs -> d (fp16 LE) then qs[16]; element j is bit j % 8 of byte j / 8
# (least significant first), 1 for +d and 0 for -d: numpy's packbits with bitorder="little".
# tq_common hands over digits q = code + 1, so -1 -> 0 -> bit 0 and +1 -> 2 -> bit 1.


def pack_qs(q: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n_blocks, 128) digits 0 or 2 -> (n_blocks, 16) qs bytes (a 0 code, digit 1, is refused
    before: SPEC.codes, formats/base.py `refuse_codes`)."""
    return np.packbits(q >> 1, axis=-1, bitorder="little")


def unpack_qs(qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n_blocks, 16) qs bytes -> (n_blocks, 128) digits 0 or 2, element order."""
    return np.unpackbits(qs, axis=-1, bitorder="little") << np.uint8(1)


def pack(codes: npt.NDArray[np.int8], d: float = 1.0) -> npt.NDArray[np.uint8]:
    """Pack binary codes (rows, K), K % 128 == 0, into Q1_0 blocks that all carry fp16(d).

    Example:
        >>> pack(np.ones((1, 128), np.int8))[[0, 1, 2, 17]].tobytes().hex()
        '003cffff'
    """
    return CODEC.pack_rows(codes, tq.fp16_d(SPEC_FP16, d))


def unpack(data: npt.NDArray[np.uint8],
           shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float16]]:
    """Q1_0 bytes -> (int8 codes in {-1, +1} of `shape`, each block's d as fp16)."""
    codes, d_bits = CODEC.unpack_rows(data, shape)
    return codes, d_bits.view(np.float16)


CODEC = tq.Blocks(SPEC, pack_qs, unpack_qs)    # registered as "q1_0"
FP16 = tq.Blocks(SPEC_FP16, pack_qs, unpack_qs)  # registered as "q1_0-fp16"
