"""TL1: bitnet.cpp's ARM (NEON) lookup-table layout; pairs of ternary weights -> one 4-bit index.

Spec: formats/tl1.md. Reference (microsoft/BitNet@16da220, reference/bitnet-cpp.md §2.1-2.3):
utils/convert-hf-to-gguf-bitnet.py `preprocess_weights_tl1` / `process_tl1` (layout),
utils/codegen_tl1.py (`lut_ctor` index table, `gen_transform_code`: scale at qweights + k*m/4).
Type ids: Eddie-Wang1120/llama.cpp@406a503 ggml/include/ggml.h L393-396, include/llama.h L176-181.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats import i2s
from bitconv.formats import tl_common as tl
from bitconv.formats.base import I8, U8, FormatSpec, check_length
from bitconv.formats.tiling import Tiling
from bitconv.gguf_values import GGMLType

# n/4 bytes + the 32-byte tail: ggml_nbytes' I2_S rule (Codec.nbytes with 4 elements per byte)
# tiles span rows (row_local=False)
SPEC = FormatSpec(name="tl1", type_name="TL1", ggml_type=GGMLType.TL1, file_type=38,
                  block_elems=4, block_bytes=1, tail_bytes=tl.TAIL_BYTES, row_local=False)

# Index of the pair (t0, t1) = (W[m, 2p], W[m, 2p+1]): idx = 3*t0 + t1 + 4, in 0..8, the slot of
# lut_ctor's table [-b0-b1, -b0, -b0+b1, -b1, 0, b1, b0-b1, b0, b0+b1]. Two indices per byte.
#
# Byte order (bitnet.cpp's names, by = 256 // bm), outermost first:
#   iBM < M/BM | iBK < K/BK | ibm < BM/bm | iby < BK/by | i16b < bm/16 | ip < by/4 | r < 16
#   byte = idx[m, p] << 4 | idx[m, p + 1]
#   m = iBM*BM + ibm*bm + 16*i16b + r,   p = iBK*BK/2 + iby*by/2 + 2*ip
# so every BM-row tile is contiguous. Then the float32 LE multiplier and 28 zero bytes.
_TO_FILE = (0, 4, 1, 5, 2, 6, 3, 7)    # (iBM, ibm, i16b, r, iBK, iby, ip, h) -> file order
_FROM_FILE = (0, 2, 4, 6, 1, 3, 5, 7)  # its inverse


def _dims(t: Tiling, rows: int) -> tuple[int, ...]:
    # pair indices (rows, K/2) seen as (iBM, ibm, i16b, r, iBK, iby, ip, h)
    return (rows // t.BM, t.BM // t.bm, t.bm // 16, 16, t.K // t.BK, t.BK // t.by, t.by // 4, 2)


def pack_body(codes: npt.NDArray[np.int8], t: Tiling) -> npt.NDArray[np.uint8]:
    """Index bytes of whole BM-row tiles of codes (rows % BM == 0, K columns) under tiling `t`.
    Consecutive tiles pack independently: the bytes of rows [a, b) are body[a*K/4 : b*K/4]."""
    codes = tl.as_codes(SPEC, codes)
    rows, k = codes.shape
    if rows % t.BM or k != t.K:
        raise PackError(f"tl1 packs whole tiles of BM = {t.BM} rows and K = {t.K} columns, "
                        f"got shape {codes.shape}")
    idx = tl.pair_index(codes).reshape(_dims(t, rows))
    return tl.join_nibbles(idx.transpose(_TO_FILE)).reshape(-1)


def pack(codes: npt.NDArray[np.int8], multiplier: float | np.float32,
         t: Tiling | None = None) -> npt.NDArray[np.uint8]:
    """Pack one ternary tensor as TL1 tensor data.

    Args:
        codes: int8 (out_features, in_features) in {-1, 0, +1}.
        multiplier: the per-tensor scale, w = multiplier * codes.
        t: tiling; default tiling.choose("tl1", codes.shape), which the sidecar records.

    Returns:
        uint8 array of nbytes(shape): index bytes, multiplier, 28 zero bytes.

    Example:
        >>> pack(np.zeros((32, 16), np.int8), 1.0)[:2].tobytes().hex()
        '4444'
    """
    codes = tl.as_codes(SPEC, codes)
    t = tl.resolve("tl1", codes.shape, t)
    return np.concatenate([pack_body(codes, t), i2s.pack_tail(multiplier)])


def unpack(data: npt.NDArray[np.uint8], shape: tuple[int, ...],
           t: Tiling | None = None) -> tuple[npt.NDArray[np.int8], np.float32]:
    """Decode TL1 tensor data (nbytes(shape) bytes, may be a read-only memmap) into int8 codes of
    `shape` and the float32 multiplier; InputError on a wrong length or an index above 8.
    The tiling is not stored in the file: `t` defaults to bitconv's choice (the inverse of
    `pack`); readers of files pass the file's (`decode`)."""
    shape = (int(shape[0]), int(shape[1]))
    try:
        t = tl.resolve("tl1", shape, t)
    except PackError as e:
        raise InputError(str(e)) from None
    data = check_length(SPEC, data, shape, CODEC.nbytes(shape))
    n_body = shape[0] * shape[1] // 4
    file_dims = tuple(_dims(t, shape[0])[i] for i in _TO_FILE[:-1])
    nib = tl.split_nibbles(data[:n_body].reshape(file_dims))      # file order, h last
    idx = nib.transpose(_FROM_FILE).reshape(shape[0], shape[1] // 2)
    tl.bad_index("tl1", "index", idx, 8, 2)
    return tl.pair_codes(idx), i2s.read_tail(data, n_body)


class TL1(tl.Tiled):
    def encode(self, multiplier: float | np.float32, chunks: Iterable[I8],
               t: Tiling | None = None) -> Iterator[U8]:
        """The tensor's bytes from its row chunks. The tiling depends on M, which only the last
        chunk reveals, so the codes are gathered first (M*K bytes), then packed a few tiles at
        a time. `t`: another tiling than bitconv's (one bitnet.cpp chose)."""
        codes = tl.gather(SPEC, chunks)
        t = tl.resolve("tl1", codes.shape, t)  # default: bitconv's choice, as the sidecar says
        for rows in tl.tile_groups(t):
            yield pack_body(codes[rows], t)
        yield i2s.pack_tail(multiplier)


CODEC = TL1(SPEC, unpack)
