"""Ternary codes three rows to a float64, for exact integer products at 8/3 bytes a weight.

A BitLinear's product in the integer modes is S = q @ codesᵀ with q integer activations
(|q| ≤ 128) and codes in {-1, 0, 1} (runtime/bitlinear.py). Rows j, j+m and j+2m of the codes
(m = ceil(out/3), padded with zero rows) are held as one float64 row

    P[:, j] = c_j + B·c_{j+m} + B²·c_{j+2m}          B = 2^18

so that one float64 BLAS product gives r = q @ P = S_j + B·S_{j+m} + B²·S_{j+2m}. Each part is
an integer with |S| ≤ L = Σ|q| of that token. While L ≤ B/2 - 1 = 131071:
  - every product and every partial sum is an integer below L·(1 + B + B²) < 2^53, so float64
    holds it exactly, in any summation order (BLAS may sum as it likes);
  - r decodes exactly: hi = rint(r·2^-36) (the lower parts' |S_j + B·S_{j+m}| < B²/2),
    then mid = rint((r - hi·B²)·2^-18), lo = r - hi·B² - mid·B.
A token whose Σ|q| exceeds the bound (K > 1024 with large activations everywhere) has its K
axis cut into spans whose sums stay within it; each span's parts are decoded and then added,
exact too (all below 2^24). So `dot` equals float32's `q @ codesᵀ` bit for bit, always.

Why: decoding a token reads every weight once, so it is bound by memory traffic (4 bytes a
weight as float32), and a prefill is bound by multiply-adds; float64 BLAS does half as many
multiply-adds a second as float32 but each here does three weights' work, and reads 8/3 bytes a
weight. Measured in runtime/memory.py's doc.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

F64 = np.float64
SHIFT = 18
B = float(1 << SHIFT)
LIMIT = (1 << (SHIFT - 1)) - 1  # the largest Σ|q| of a token one product decodes exactly
QMAX = 128  # |q| ≤ 128: what a span's sum can overshoot a cut by
BYTES_PER_ROW = 8  # one float64 per packed row (three rows of codes) and input element
BLOCK = 256  # Packed3.of's K block: its temporaries, (3m, BLOCK) and three (m, BLOCK) float64
TEMP_BYTES_PER_ROW = 2 * 8 * BLOCK  # arrays, are 2·8·BLOCK bytes per row of codes


def packed_rows(out: int) -> int:
    """Packed float64 rows (columns of P) for `out` rows of codes."""
    return -(-out // 3)


@dataclass(frozen=True, eq=False)
class Packed3:
    """Codes (out, K) held as P (K, ceil(out/3)) float64, C-contiguous (the module doc)."""

    packed: npt.NDArray[np.float64]
    out: int

    @classmethod
    def of(cls, codes: npt.NDArray[np.generic], block: int = BLOCK) -> Packed3:
        """Pack `codes` (out, K), any dtype holding -1, 0 and 1, K-block by K-block (bounded
        temporaries: the result is the only full-size array)."""
        out, k = codes.shape
        m = packed_rows(out)
        p = np.empty((k, m), F64)
        for k0 in range(0, k, block):
            c = np.zeros((3 * m, min(block, k - k0)), F64)
            c[:out] = codes[:, k0:k0 + block]
            p[k0:k0 + block] = (c[:m] + B * c[m:2 * m] + (B * B) * c[2 * m:]).T
        return cls(p, out)

    @property
    def shape(self) -> tuple[int, int]:
        """The codes' shape (out, K), as for a float32 codes array."""
        return self.out, self.packed.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes)

    def dot(self, q: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """q (n, K) float32 integers with |q| ≤ 128 -> q @ codesᵀ (n, out) float32, exact."""
        q64 = q.astype(F64)
        spans = _spans(np.abs(q))
        if len(spans) == 1 and q.shape[0] == 1:  # one token: a matrix-vector product (gemv)
            return self._parts((q64[0] @ self.packed)[None])
        if len(spans) == 1:
            return self._parts(q64 @ self.packed)
        total = np.zeros((q.shape[0], 3 * self.packed.shape[1]), F64)
        for a, b in spans:
            total += self._parts(q64[:, a:b] @ self.packed[a:b], F64, trim=False)
        return total[:, :self.out].astype(np.float32)

    def _parts(self, r: npt.NDArray[np.float64], dtype: type = np.float32,
               trim: bool = True) -> npt.NDArray[np.float32]:
        """r = lo + B·mid + B²·hi (n, m) -> [lo | mid | hi] (n, out or 3m) in `dtype`."""
        m = r.shape[1]
        y = np.empty((r.shape[0], 3 * m), dtype)
        hi = np.rint(r * (1.0 / (B * B)))
        r = r - hi * (B * B)
        mid = np.rint(r * (1.0 / B))
        y[:, :m], y[:, m:2 * m], y[:, 2 * m:] = r - mid * B, mid, hi
        return y[:, :self.out] if trim else y


def _spans(a: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
    """Cuts of the K axis into spans where every row's Σ|q| is ≤ LIMIT: one span (0, K) when
    every row already is. A span ends where the running sum of the column maxima passes a
    multiple of LIMIT - QMAX, so no span sums to more than that plus one column's QMAX."""
    k = a.shape[1]
    if a.size == 0 or float(a.sum(axis=1, dtype=F64).max()) <= LIMIT:
        return [(0, k)]
    run = np.cumsum(a.max(axis=0), dtype=F64)
    cut = np.flatnonzero(np.diff(run // (LIMIT - QMAX))) + 1
    edges = [0, *cut.tolist(), k]
    return list(pairwise(edges))
