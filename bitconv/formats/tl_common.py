"""Helpers shared by the TL1 and TL2 codecs: code checks, the pair index, nibbles, the scale tail,
whole-tensor buffering, the kernel-config sidecar and metadata key. Layouts: formats/tl1.md,
formats/tl2.md.

A TL tensor's bytes depend on its tiling (BM, BK, bm), which bitnet.cpp keeps out of the GGUF
(in include/kernel_config.ini). So `decode` takes the file's tiling and refuses to run without
one; the readers find it (bitconv/containers/kernel_config.py). bitconv's own TL files carry it in the
metadata key KV_KEY as well as in the `<file>.kernel_config.ini` sidecar.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ClassVar, cast

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats import i2s, tiling
from bitconv.formats.base import (
    I8,
    U8,
    Codec,
    FormatSpec,
    Shape,
    Weights,
    check_2d,
    check_codes,
)
from bitconv.formats.tiling import Fmt, Tiling
from bitconv.gguf_values import GGUFValueType
from bitconv.types import KV

TAIL_BYTES = i2s.SPEC.tail_bytes  # I2_S's tail (i2s.pack_tail): the "+ 32" of ggml_nbytes
GROUP_ELEMS = 1 << 22  # codes packed per step of encode(), in whole BM-row tiles
SIDECAR_SUFFIX = ".kernel_config.ini"
# GGUF STRING: the sections of the sidecar (tiling.body), so that a file describes itself
KV_KEY = "bitconv.tl.kernel_config"

Unpack = Callable[[U8, Shape, Tiling], tuple[I8, np.float32]]


class Tiled(Codec):
    """A TL layout: one tensor (bitnet.cpp's hidden `<name>_scale` is, on disk, the weight's
    32-byte tail), whose bytes depend on the tiling (BM, BK, bm). Encoding uses bitconv's
    tiling for the shape, recorded in the sidecar and the KV_KEY metadata; decoding takes the
    file's and refuses None, since guessing one decodes other weights without any error."""

    tiled: ClassVar[bool] = True

    def __init__(self, spec: FormatSpec, unpack: Unpack) -> None:
        super().__init__(spec)
        self.fmt, self._unpack = cast(Fmt, spec.name), unpack

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """PackError unless `shape` (out_features, in_features) has a tiling (tiling.choose)."""
        check_2d(self.spec, shape)
        tiling.choose(self.fmt, (int(shape[0]), int(shape[1])))

    def decode(self, datas: Sequence[U8], shape: Shape,
               tiling: Tiling | None = None) -> tuple[I8, np.float32]:
        return self._unpack(datas[0], shape, file_tiling(self.fmt, shape, tiling))

    def sidecar(self, weights: Weights) -> tuple[str, bytes] | None:
        """`.kernel_config.ini`: the tiling of every distinct weight shape (tiling.kernel_config)."""
        if not weights:
            return None
        return SIDECAR_SUFFIX, tiling.kernel_config(self.fmt, _shapes(weights))

    def kvs(self, arch: str, weights: Weights = ()) -> list[KV]:
        """[KV_KEY = the sidecar's sections] for the weights bitconv packs, or [] without."""
        if not weights:
            return []
        tiles = [tiling.choose(self.fmt, s) for s in tiling.model_shapes(_shapes(weights))]
        return [KV(KV_KEY, GGUFValueType.STRING, tiling.body(tiles))]


def _shapes(weights: Weights) -> list[tuple[int, int]]:
    return [(int(s[0]), int(s[1])) for _, s in weights]


def as_codes(spec: FormatSpec, codes: npt.ArrayLike) -> I8:
    """`codes` as a 2-D int8 array in {-1, 0, +1}, or PackError naming the first bad element."""
    arr = np.asarray(codes)
    check_2d(spec, arr.shape)
    return check_codes(spec, arr)


def pair_index(codes: I8) -> U8:
    """(R, 2n) codes -> (R, n) TL1 pair indices 3*t0 + t1 + 4 in 0..8 (t0 the even column)."""
    c = codes.reshape(codes.shape[0], codes.shape[1] // 2, 2).astype(np.uint8)  # -1 -> 255: sums wrap
    return (c[..., 0] * np.uint8(3) + c[..., 1] + np.uint8(4)).astype(np.uint8)


def pair_codes(idx: U8) -> I8:
    """(R, n) pair indices 0..8 -> (R, 2n) codes; the inverse of pair_index."""
    t0 = idx // 3
    out = np.stack([t0, idx - 3 * t0], axis=-1).astype(np.int8) - 1
    return out.reshape(idx.shape[0], 2 * idx.shape[1])


def join_nibbles(x: U8) -> U8:
    """(..., 2) values below 16 -> (...) bytes, x[..., 0] in the high nibble."""
    return ((x[..., 0] << 4) | x[..., 1]).astype(np.uint8)


def split_nibbles(b: U8) -> U8:
    """(...) bytes -> (..., 2): high nibble first."""
    return np.stack([b >> 4, b & 15], axis=-1).astype(np.uint8)


def bad_index(fmt: Fmt, what: str, idx: npt.NDArray[np.integer], limit: int, group: int,
              col0: int = 0) -> None:
    """InputError for the first (row-major) index above `limit` in `idx`, whose column g covers
    weight columns col0 + group*g onwards."""
    if (at := first(idx > limit, group, col0)) is not None:
        row, c = at
        raise InputError(f"{fmt} data holds {what} {int(idx[row, (c - col0) // group])} (not a "
                         f"ternary {'pair' if group == 2 else 'triple'}) at row {row}, "
                         f"columns {c}..{c + group - 1}")


def first(bad: npt.NDArray[np.bool_], group: int, col0: int = 0) -> tuple[int, int] | None:
    """(row, first weight column) of the first (row-major) True in `bad`, whose column g covers
    weight columns col0 + group*g onwards; None if there is none."""
    if not bad.any():
        return None
    row, g = divmod(int(np.argmax(bad.reshape(-1))), bad.shape[1])
    return row, col0 + group * g


def check_zeros(fmt: Fmt, data: U8, start: int, stop: int) -> None:
    """InputError unless data[start:stop] (padding every converter writes as zeros) is zero."""
    nz = np.flatnonzero(data[start:stop])
    if nz.size:
        raise InputError(f"{fmt} data has byte {int(data[start + nz[0]]):#04x} at offset "
                         f"{start + int(nz[0])} in its zero padding (bytes {start}..{stop - 1}): "
                         "not what any tiling writes")


def gather(spec: FormatSpec, chunks: Iterable[npt.ArrayLike]) -> I8:
    """All row chunks of one tensor as one array. The layout depends on (M, K), and encode() is
    not told M, so TL codecs hold one tensor's int8 codes (M*K bytes) before packing."""
    parts = [as_codes(spec, c) for c in chunks]
    if not parts:
        raise PackError(f"{spec.name}: no rows to pack")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def tile_groups(t: Tiling) -> Iterator[slice]:
    """Row ranges of whole BM tiles, about GROUP_ELEMS codes each, covering all M rows."""
    step = max(1, GROUP_ELEMS // (t.BM * t.K)) * t.BM
    for a in range(0, t.M, step):
        yield slice(a, min(a + step, t.M))


def resolve(fmt: Fmt, shape: tuple[int, int], t: Tiling | None) -> Tiling:
    """`t` checked against `shape`, or bitconv's choice for `shape`."""
    shape = (int(shape[0]), int(shape[1]))
    if t is None:
        return tiling.choose(fmt, shape)
    if (t.fmt, t.M, t.K) != (fmt, *shape):
        raise PackError(f"{fmt}: tiling for {t.fmt} ({t.M}, {t.K}) used on shape {shape}")
    if (why := tiling.problem(t)) is not None:
        raise PackError(f"{fmt} cannot use BM={t.BM}, BK={t.BK}, bm={t.bm} for shape {shape}: "
                        f"{why}")
    return t


def file_tiling(fmt: Fmt, shape: tuple[int, ...], t: Tiling | None) -> Tiling:
    """decode's tiling: the file's, checked against `shape`. None is refused: the tiling is not in
    the tensor data, and guessing one decodes other weights without any error."""
    shape = (int(shape[0]), int(shape[1]))
    if t is None:
        raise InputError(f"{fmt}: no tiling (BM, BK, bm) given for shape {shape}: a TL tensor "
                         "cannot be decoded without the kernel configuration it was written with")
    try:
        return resolve(fmt, shape, t)
    except PackError as e:
        raise InputError(str(e)) from None
