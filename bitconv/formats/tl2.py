"""TL2: bitnet.cpp's x86 (AVX2) lookup-table layout; triples of ternary weights -> a 4-bit magnitude
index plus a sign bit, and the K % BK remainder as TL1-style pairs.

Spec: formats/tl2.md. Reference (microsoft/BitNet@16da220, reference/bitnet-cpp.md §2.1, §2.4):
utils/convert-hf-to-gguf-bitnet.py `preprocess_weights_tl2`, `preprocess_three_weights_tl2`,
`preprocess_two_weights_tl2` (layout, zero padding); utils/codegen_tl2.py (`three_lut_ctor` table,
`three_tbl_impl` sign bits, `gen_transform_code`: scale at qweights + pad32(ggml_nbytes formula)).
Type ids: Eddie-Wang1120/llama.cpp@406a503 ggml/include/ggml.h L393-396, include/llama.h L176-181.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats import i2s
from bitconv.formats import tl_common as tl
from bitconv.formats.base import I8, U8, FormatSpec, check_2d, check_length
from bitconv.formats.tiling import Tiling
from bitconv.gguf_values import GGMLType

# 24 weights -> 8 magnitude nibbles (4 bytes) + 8 sign bits (1 byte): ggml_nbytes' "/ 3 * 5 / 8"
# tiles span rows (row_local=False)
SPEC = FormatSpec(name="tl2", type_name="TL2", ggml_type=GGMLType.TL2, file_type=39,
                  block_elems=24, block_bytes=5, tail_bytes=tl.TAIL_BYTES, row_local=False)
MIN_K = 256  # bitconv sizes TL2 tensors by ggml_nbytes' formula, which starts at K = 256

# Columns [0, three_k): triple g = (W[m,3g], W[m,3g+1], W[m,3g+2]) -> v = 9*t0 + 3*t1 + t2 in
# -13..13; magnitude |v| (slot of three_lut_ctor's 14-entry table) and sign bit (v < 0).
# Columns [three_k, K): pairs -> 3*t0 + t1 + 4 as in TL1. Tensor data, in order:
#   magnitudes  three_k*M/6 B: iBM | iBK < three_k/BK | ibm < BM/32 | iby < BK/6 | 32-byte row
#               row byte s = |v|[m, g] << 4 | |v|[m, g+1],  g = iBK*BK/3 + 2*iby
#   signs      three_k*M/24 B: iBM | iBK | ibm | ic < BK/24 | 16 little-endian uint16 words w;
#               triple q (0..7) of the chunk, row r: word r % 16, bit 15 - (2q + r // 16)
#   pairs        two_k*M/4 B: iBM | ik < two_k/32 | ibm | iby < 8 | 32-byte row,
#               row byte s = idx[m, p] << 4 | idx[m, p+1],  p = ik*16 + 2*iby (pairs of the tail)
#   zeros up to pad32(ggml_nbytes formula), float32 LE multiplier, 28 zero bytes.
# In a 32-byte row, byte s holds row r = 8*GROUPS[s // 8] + s % 8 of the 32-row block
# (m = iBM*BM + ibm*32 + r): the converter swaps the middle 8-byte groups for the AVX2 unpack.
GROUPS = [0, 2, 1, 3]  # its own inverse
_ROW_TO_FILE = (0, 4, 1, 5, 2, 3, 6)      # (iBM, ibm, G, j, iBK, iby, h) -> file order
_ROW_FROM_FILE = (0, 2, 4, 5, 1, 3, 6)
_SIGN_TO_FILE = (0, 4, 1, 5, 3, 6, 2)     # (iBM, ibm, rh, w, iBK, ic, q) -> (.., w, q, rh)
_SIGN_FROM_FILE = (0, 2, 6, 4, 1, 3, 5)


def payload(t: Tiling) -> tuple[int, int, int]:
    """Bytes of the magnitude, sign and pair sections."""
    return t.three_k * t.M // 6, t.three_k * t.M // 24, t.two_k * t.M // 4


def _row_dims(t: Tiling, rows: int, width: int, per_row: int) -> tuple[int, ...]:
    # (rows, width*per_row*2) nibbles as (iBM, ibm, G, j, slab, iby, h)
    return (rows // t.BM, t.BM // 32, 4, 8, width, per_row, 2)


def pack_sections(codes: npt.NDArray[np.int8], t: Tiling) -> tuple[npt.NDArray[np.uint8], ...]:
    """(magnitudes, signs, pairs) of whole BM-row tiles of `codes` under tiling `t`; consecutive
    tiles pack independently, each section tile-major."""
    codes = tl.as_codes(SPEC, codes)
    rows, k = codes.shape
    if rows % t.BM or k != t.K:
        raise PackError(f"tl2 packs whole tiles of BM = {t.BM} rows and K = {t.K} columns, "
                        f"got shape {codes.shape}")
    tri = codes[:, :t.three_k].reshape(rows, -1, 3).astype(np.int8)
    v = tri[..., 0] * np.int8(9) + tri[..., 1] * np.int8(3) + tri[..., 2]   # (rows, three_k/3)
    nslab = t.three_k // t.BK
    mag = np.abs(v).astype(np.uint8).reshape(_row_dims(t, rows, nslab, t.BK // 6))[:, :, GROUPS]
    neg = (v < 0).reshape(rows // t.BM, t.BM // 32, 2, 16, nslab, t.BK // 24, 8)
    bits = neg.transpose(_SIGN_TO_FILE).reshape(-1, 16)        # (.., w): i = 2q + rh
    words = np.packbits(bits, axis=-1)[:, ::-1]                # MSB-first pair -> little-endian
    pairs = tl.pair_index(codes[:, t.three_k:])
    pairs = pairs.reshape(_row_dims(t, rows, t.two_k // 32, 8))[:, :, GROUPS]
    return (tl.join_nibbles(mag.transpose(_ROW_TO_FILE)).reshape(-1),
            np.ascontiguousarray(words).reshape(-1),
            tl.join_nibbles(pairs.transpose(_ROW_TO_FILE)).reshape(-1))


def pack(codes: npt.NDArray[np.int8], multiplier: float | np.float32,
         t: Tiling | None = None) -> npt.NDArray[np.uint8]:
    """Pack one ternary tensor as TL2 tensor data.

    Args:
        codes: int8 (out_features, in_features) in {-1, 0, +1}, in_features >= 256.
        multiplier: the per-tensor scale, w = multiplier * codes.
        t: tiling; default tiling.choose("tl2", codes.shape), which the sidecar records.

    Returns:
        uint8 array of nbytes(shape): the three sections, zeros, multiplier, 28 zero bytes.

    Example:
        >>> pack(np.zeros((32, 256), np.int8), 1.0).size
        2080
    """
    codes = tl.as_codes(SPEC, codes)
    CODEC.check_shape(codes.shape)
    t = tl.resolve("tl2", codes.shape, t)
    return np.concatenate([*pack_sections(codes, t), _end(t, multiplier)])


def _end(t: Tiling, multiplier: float | np.float32) -> npt.NDArray[np.uint8]:
    """Zeros from the payload to pad32(formula), then the tail."""
    pad = CODEC.nbytes((t.M, t.K)) - tl.TAIL_BYTES - sum(payload(t))
    return np.concatenate([np.zeros(pad, np.uint8), i2s.pack_tail(multiplier)])


def unpack(data: npt.NDArray[np.uint8], shape: tuple[int, ...],
           t: Tiling | None = None) -> tuple[npt.NDArray[np.int8], np.float32]:
    """Decode TL2 tensor data (nbytes(shape) bytes, may be a read-only memmap) into int8 codes of
    `shape` and the float32 multiplier; InputError on what no tiling writes: a wrong length, a
    magnitude above 13, a sign bit on a zero triple, a pair index above 8, a non-zero byte in
    the padding before the tail. The tiling is not stored in the file: `t` defaults to
    bitconv's choice (the inverse of `pack`); readers of files pass the file's (`decode`)."""
    shape = (int(shape[0]), int(shape[1]))
    try:
        CODEC.check_shape(shape)
        t = tl.resolve("tl2", shape, t)
    except PackError as e:
        raise InputError(str(e)) from None
    data = check_length(SPEC, data, shape, CODEC.nbytes(shape))
    n_mag, n_sign, n_two = payload(t)
    m, nslab = shape[0], t.three_k // t.BK
    dims = _row_dims(t, m, nslab, t.BK // 6)
    mag = tl.split_nibbles(data[:n_mag].reshape([dims[i] for i in _ROW_TO_FILE[:-1]]))
    mag = mag.transpose(_ROW_FROM_FILE)[:, :, GROUPS].reshape(m, -1)     # (M, three_k/3)
    tl.bad_index("tl2", "magnitude index", mag, 13, 3)
    words = data[n_mag:n_mag + n_sign].reshape(-1, 16, 2)[:, :, ::-1]
    bits = np.unpackbits(words, axis=-1).reshape(m // t.BM, nslab, t.BM // 32, t.BK // 24, 16, 8, 2)
    neg = bits.transpose(_SIGN_FROM_FILE).reshape(m, -1).astype(bool)
    if (at := tl.first(neg & (mag == 0), 3)) is not None:  # the converter clears a zero's sign
        raise InputError(f"tl2 data holds a sign bit on a zero triple (not what any tiling "
                         f"writes) at row {at[0]}, columns {at[1]}..{at[1] + 2}")
    d = np.where(neg, 13 - mag.astype(np.int16), 13 + mag.astype(np.int16))  # v + 13, 0..26
    tri = np.stack([d // 9, d // 3 % 3, d % 3], axis=-1).astype(np.int8) - 1
    dims = _row_dims(t, m, t.two_k // 32, 8)
    two = data[n_mag + n_sign:n_mag + n_sign + n_two]
    pairs = tl.split_nibbles(two.reshape([dims[i] for i in _ROW_TO_FILE[:-1]]))
    pairs = pairs.transpose(_ROW_FROM_FILE)[:, :, GROUPS].reshape(m, -1)   # (M, two_k/2)
    tl.bad_index("tl2", "index", pairs, 8, 2, col0=t.three_k)
    tl.check_zeros("tl2", data, n_mag + n_sign + n_two, CODEC.nbytes(shape) - tl.TAIL_BYTES)
    codes = np.concatenate([tri.reshape(m, -1), tl.pair_codes(pairs)], axis=1)
    return codes, i2s.read_tail(data, CODEC.nbytes(shape) - tl.TAIL_BYTES)


class TL2(tl.Tiled):
    def check_shape(self, shape: tuple[int, ...]) -> None:
        """PackError unless `shape` (out_features, in_features) has a TL2 tiling."""
        check_2d(SPEC, shape)
        if int(shape[1]) < MIN_K:
            raise PackError(f"tl2 needs in_features >= {MIN_K} (ggml_nbytes' TL2 size formula), "
                            f"got {int(shape[1])}")
        super().check_shape(shape)

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """ggml_nbytes for TL2 (bitnet.cpp ggml.c L3480-3487): (K-256)*M/3*5/8 + 256*M/2*4/8,
        integer arithmetic left to right, rounded up to 32, + 32 for the tail; K = ne0, M = ne1
        (ne2, ne3 ignored, as there). InputError below 256 columns, where it has no size."""
        k, m = int(shape[-1]), int(shape[-2]) if len(shape) > 1 else 1
        if k < MIN_K:
            raise InputError(f"TL2 needs at least 256 columns, got shape {shape}")
        n = (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8
        return -(-n // 32) * 32 + tl.TAIL_BYTES

    def encode(self, multiplier: float | np.float32, chunks: Iterable[I8],
               t: Tiling | None = None) -> Iterator[U8]:
        """The tensor's bytes from its row chunks. The tiling depends on M, which only the last
        chunk reveals, so the codes are gathered first (M*K bytes); magnitudes then go out a few
        tiles at a time while the sign and pair sections (about a fifth of the output) wait for
        the end. `t`: another tiling than bitconv's (one bitnet.cpp chose)."""
        codes = tl.gather(SPEC, chunks)
        self.check_shape(codes.shape)
        t = tl.resolve("tl2", codes.shape, t)  # default: bitconv's choice, as the sidecar says
        later: list[U8] = []
        signs: list[U8] = []
        for rows in tl.tile_groups(t):
            mag, sign, two = pack_sections(codes[rows], t)
            signs.append(sign)
            later.append(two)
            yield mag
        yield from signs
        yield from later
        yield _end(t, multiplier)


CODEC = TL2(SPEC, unpack)
