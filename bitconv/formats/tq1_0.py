"""TQ1_0: llama.cpp's base-3 ternary blocks (ggml type 34), 256 elements -> 52 bytes + fp16 d.

Spec: formats/tq1_0.md. Reference: ggml-org/llama.cpp@0c1e57098 ggml/src/ggml-common.h L272-277
(block_tq1_0), ggml/src/ggml-quants.c L2316 (quantize_row_tq1_0_ref), L2428 (dequantize).

Two codecs live here, as for TQ2_0:
    tq1_0       (`CODEC`) lossless: d = 1 in every block + an F32 [1] `<name>.scale`
    tq1_0-fp16  (`FP16`) d = fp16(multiplier) in every block; reads back float32(fp16(m))
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError
from bitconv.formats import tq_common as tq
from bitconv.formats.base import FormatSpec
from bitconv.gguf_values import GGMLType

SPEC = FormatSpec(name="tq1_0", type_name="TQ1_0", ggml_type=GGMLType.TQ1_0, file_type=36,
                  block_elems=256, block_bytes=54, tail_bytes=0)
SPEC_FP16 = replace(SPEC, name="tq1_0-fp16", lossless=False)

# One block of 256 digits q = ternary + 1 -> qs[48] | qh[4] | d (fp16 LE). Five (qh: four)
# digits per byte, the first the most significant base-3 digit, spaced like TQ2_0's groups:
#   qs[m]      m < 32   digits q[m], q[m+32], q[m+64], q[m+96], q[m+128]         (e < 160)
#   qs[32+m]   m < 16   digits q[160+m], q[176+m], q[192+m], q[208+m], q[224+m]  (160 <= e < 240)
#   qh[m]      m < 4    digits q[240+m], q[244+m], q[248+m], q[252+m], then 0   (e >= 240)
# value v = sum digit_n * 3^(4-n) (0..242), stored as byte = ceil(v * 256 / 243), so that
# digit n reads back as ((uint8)(byte * 3^n) * 3) >> 8 without a division.
_CEIL_256_243 = ((np.arange(243, dtype=np.uint16) * 256 + 242) // 243).astype(np.uint8)
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8).reshape(1, 5, 1)


TILE = 4096  # blocks per step of pack_qs: its (5, 7, TILE) uint64 words, 1.1 MB, stay in L2


def pack_qs(q: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n_blocks, 256) digits 0..2 -> (n_blocks, 52) bytes: qs[48] then qh[4].

    All 52 bytes of a block are a 5-digit Horner sum (qh's fifth digit is 0), and no byte ever
    carries into the next (values <= 242), so they are computed as uint64 words, 8 bytes at a
    time, on words transposed to (digit n, word, block): each operation then runs along the
    blocks instead of over rows of 4 words. Word w of a block holds digits 8w..8w+7, so digit n
    of qs word j is word 4n + j, of qs word 4 + j (bytes 32..47) word 20 + 2n + j; qh's digits
    are the 4-byte halves of words 30 and 31."""
    n = q.shape[0]
    words = np.ascontiguousarray(q).reshape(n, 256).view(np.uint64)      # (n, 32)
    out = np.empty((n, 52), np.uint8)
    g = np.zeros((5, 7, min(TILE, n)), np.uint64)                      # g[4, 6] stays 0
    for a in range(0, n, TILE):
        t = words[a:a + TILE].T                                         # (32, tile), a view
        m = t.shape[1]
        np.copyto(g[:, 0:4, :m], t[0:20].reshape(5, 4, m))
        np.copyto(g[:, 4:6, :m], t[20:30].reshape(5, 2, m))
        np.copyto(g[0, 6, :m], t[30])
        np.right_shift(t[30], 32, out=g[1, 6, :m])
        np.copyto(g[2, 6, :m], t[31])
        np.right_shift(t[31], 32, out=g[3, 6, :m])
        v = g[0, :, :m]
        for i in range(1, 5):                                          # Horner, in g[0]
            v *= 3
            v += g[i, :, :m]
        b = np.ascontiguousarray(v.T).view(np.uint8)                   # (m, 56), 4 spare bytes
        np.take(_CEIL_256_243, b[:, :52], out=out[a:a + m])
    return out


def _digits(b: npt.NDArray[np.uint8], n: int) -> npt.NDArray[np.uint8]:
    """(n_blocks, width) bytes -> (n_blocks, n, width) digits, digit n outer (element order)."""
    shifted = b[:, None, :] * _POW3[:, :n]          # uint8 products wrap, as in the C code
    return ((shifted.astype(np.uint16) * 3) >> 8).astype(np.uint8)


def unpack_qs(b: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n_blocks, 52) bytes -> (n_blocks, 256) digits 0..2. Every byte reads as digits 0..2, but
    13 byte values (and qh bytes with a non-zero fifth digit) are no packing of any digits:
    InputError for those, so that every accepted file repacks to the same bytes."""
    n = b.shape[0]
    q = np.concatenate([_digits(b[:, :32], 5).reshape(n, 160),
                        _digits(b[:, 32:48], 5).reshape(n, 80),
                        _digits(b[:, 48:52], 4).reshape(n, 16)], axis=1)
    bad = pack_qs(q) != b
    if bad.any():
        block, i = (int(x) for x in np.unravel_index(int(np.argmax(bad)), bad.shape))
        where = f"qs[{i}]" if i < 48 else f"qh[{i - 48}]"
        raise InputError(f"tq1_0 data holds byte 0x{int(b[block, i]):02x} at {where} of block "
                         f"{block}, which is not the packing of any ternary digits")
    return q


def pack(codes: npt.NDArray[np.int8], d: float = 1.0) -> npt.NDArray[np.uint8]:
    """Pack ternary codes (rows, K), K % 256 == 0, into TQ1_0 blocks that all carry fp16(d).

    Example:
        >>> pack(np.zeros((1, 256), np.int8))[[0, 47, 48, 51, 52, 53]].tobytes().hex()
        '80807f7f003c'
    """
    return CODEC.pack_rows(codes, tq.fp16_d(SPEC_FP16, d))


def unpack(data: npt.NDArray[np.uint8],
           shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float16]]:
    """TQ1_0 bytes -> (int8 codes of `shape`, each block's d as fp16); InputError on bytes that
    are no packing of ternary digits."""
    codes, d_bits = CODEC.unpack_rows(data, shape)
    return codes, d_bits.view(np.float16)


CODEC = tq.Blocks(SPEC, pack_qs, unpack_qs)    # registered as "tq1_0"
FP16 = tq.Blocks(SPEC_FP16, pack_qs, unpack_qs)  # registered as "tq1_0-fp16"
