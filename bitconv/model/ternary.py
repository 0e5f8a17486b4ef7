"""Ternarization as `pack` streams it: weights -> codes in {-1, 0, +1} and a float32 multiplier
(w = m * codes), by fast exact paths; model/reference.py computes the same by the textbook
definitions, and `verify` holds the two against each other.

Three sources, one result:
- latent floats (1bitLLM, 2B4T -bf16): absmean ternarization, DESIGN.md §3:
      beta = max(mean|W|, 1e-5) in float32   (the mean accumulated in float64 for reproducibility)
      codes = clip(round_half_even(W / beta), -1, 1)
  computed in two passes over row chunks so a tensor never has to be widened whole;
- floats that already are ternary x a (|W| in {0, a}): kept as sign(W) with multiplier a; running
  absmean on them would shrink the scale by the fraction of non-zeros (bitnet-cpp.md §4);
- HF-packed uint8 + weight_scale: unpacked and checked (formats/hf.py `unpack_rows`), never
  re-quantized; the scale is turned into a multiplier by the declared rule (hf.md §1.4).
Pure numpy: no files, no families.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.safetensors import to_float32
from bitconv.errors import InputError
from bitconv.formats.hf import LINEAR_CLASS, ScaleRule

EPS = np.float32(1e-5)
# Typical magnitudes (hf.md §1.4): autobitlinear beta ~ 0.5-5, inverse scales ~ 20-200.
MAX_MULTIPLY_SCALE = 20.0
MIN_DIVIDE_SCALE = 5.0


BLOCK = 1 << 16  # elements per inner step: float32 temporaries stay in L2 (~3x whole-chunk ufuncs)
# ternarize_stored's step: its temporaries are 2 bytes a value, and each numpy call is a point
# where two workers hand the GIL over (a futex wake, ~10 us on a VM): 64K-value calls spent
# more CPU on that than on the comparisons (two workers, 2B4T-bf16: 4.93 -> 4.67 CPU s).
TERNARIZE_STEP = 4 * BLOCK


@dataclass(frozen=True)
class ScanPart:
    """Pass 1 over one row chunk: what the absmean and the already-ternary test need."""

    n: int
    sum_abs: float  # float64, summed block by block in a fixed order
    max_abs: np.float32
    nonzero: int


def scan_part(stored: npt.NDArray[Any], dtype: str, name: str = "") -> ScanPart:
    """Pass 1 over a chunk of stored values (BF16 as uint16 bits, F32 or F16), in BLOCKs."""
    flat = stored.reshape(-1)
    buf = np.empty(min(BLOCK, flat.size), np.uint32)
    total, top, nonzero = 0.0, np.float32(0), 0
    for i in range(0, flat.size, BLOCK):
        a = _abs32(flat[i:i + BLOCK], dtype, buf)
        s = float(np.add.reduce(a, dtype=np.float64))
        if not math.isfinite(s):
            raise InputError(f"{name}: holds NaN or Inf values; refusing to ternarize")
        bits = a.view(np.uint32)  # |w| >= 0 orders like its bits, and integer passes are faster
        total += s
        top = max(top, bits.max().view(np.float32))
        nonzero += int(np.count_nonzero(bits))
    return ScanPart(flat.size, total, top, nonzero)


def _abs32(block: npt.NDArray[Any], dtype: str, buf: npt.NDArray[np.uint32]) -> npt.NDArray[np.float32]:
    """|block| as float32 in `buf` (bf16: clear the sign bit, then the 16 bits are an f32's top)."""
    u = buf[:block.size]
    if dtype == "BF16":
        np.bitwise_and(block, 0x7FFF, out=u, casting="unsafe")
        np.left_shift(u, 16, out=u)
        return u.view(np.float32)
    if dtype not in ("F32", "F16", "F64"):
        raise InputError(f"expected a float tensor, got {dtype}")
    f = u.view(np.float32)
    np.abs(block, out=f, casting="same_kind")
    return f


class AbsmeanScan:
    """Pass 1 over a latent tensor: ScanParts merged in row order -> absmean, already-ternary."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0
        self.sum_abs = 0.0  # float64 accumulator
        self.max_abs = np.float32(0)
        self.nonzero = 0

    def merge(self, part: ScanPart) -> None:
        self.n += part.n
        self.sum_abs += part.sum_abs
        self.max_abs = max(self.max_abs, part.max_abs)
        self.nonzero += part.nonzero

    def result(self) -> tuple[np.float32, bool]:
        """(multiplier, already_ternary). Ternary x a iff every non-zero |w| equals max|w|."""
        if self.nonzero and self.sum_abs == self.nonzero * float(self.max_abs):
            return np.float32(self.max_abs), True
        beta = np.float32(self.sum_abs / self.n) if self.n else np.float32(0)
        return max(beta, EPS), False


def ternarize_chunk(w: npt.NDArray[np.float32], multiplier: np.float32,
                    already_ternary: bool, name: str = "") -> npt.NDArray[np.int8]:
    """Pass 2: the codes of one row chunk of float32 weights, given pass 1's result."""
    if already_ternary:
        a = np.abs(w)
        if not np.all((a == 0) | (a == multiplier)):
            raise InputError(f"{name}: changed while being read (not ternary on second pass)")
        return np.sign(w).astype(np.int8)
    q = np.divide(w, multiplier, dtype=np.float32)
    np.rint(q, out=q)  # round half to even, like torch.round
    np.clip(q, -1, 1, out=q)
    return q.astype(np.int8)


def ternarize_stored(stored: npt.NDArray[Any], dtype: str, multiplier: np.float32,
                     already_ternary: bool, name: str = "") -> npt.NDArray[np.int8]:
    """Pass 2 on stored values, same codes as ternarize_chunk of their float32 widening.

    bf16, f16 and f32 codes are two comparisons with the threshold below, TERNARIZE_STEP values
    at a time;
    bf16 compares its bits: magnitudes order like their bit patterns, so with tb the bits of the
    largest bf16 <= t (t's top 16 bits), w > t is int16(bits) > tb and w < -t is
    uint16(bits) > 0x8000 + tb. Anything else is widened and ternarized in blocks."""
    flat = stored.reshape(-1)
    out = np.empty(flat.size, np.int8)
    if already_ternary or dtype not in ("BF16", "F32", "F16"):
        for i in range(0, flat.size, BLOCK):
            w = to_float32(flat[i:i + BLOCK], dtype)
            out[i:i + BLOCK] = ternarize_chunk(w, multiplier, already_ternary, name)
        return out.reshape(stored.shape)
    t = threshold(multiplier)
    # bf16 compares int16/uint16 bits against integer thresholds, f16/f32 the values
    pos: npt.NDArray[Any]
    pos_t: np.generic
    neg_t: np.generic
    neg_cmp: np.ufunc
    if dtype == "BF16":
        tb = t.view(np.uint32) >> 16
        pos, pos_t = flat.view(np.int16), np.int16(tb)
        neg, neg_t, neg_cmp = flat, np.uint16(0x8000 + tb), np.greater
    else:
        pos, pos_t, neg, neg_t, neg_cmp = flat, t, flat, -t, np.less
    size = min(TERNARIZE_STEP, flat.size)
    up, down = np.empty(size, bool), np.empty(size, bool)
    for i in range(0, flat.size, TERNARIZE_STEP):
        n = min(TERNARIZE_STEP, flat.size - i)
        np.greater(pos[i:i + n], pos_t, out=up[:n])
        neg_cmp(neg[i:i + n], neg_t, out=down[:n])
        np.subtract(up[:n].view(np.int8), down[:n].view(np.int8), out=out[i:i + n])
    return out.reshape(stored.shape)


def abs_median(stored: npt.NDArray[Any], dtype: str, name: str = "") -> np.float32:
    """median(|W|) of a latent tensor, the ternarization scale of BitNet b1.58 Reloaded (Nielsen &
    Schneider-Kamp, arXiv 2407.09527; `pack --scale-stat median`): codes = clip(rint(W / m), -1, 1),
    multiplier m. The paper's text was not available offline; this follows the authors' code
    (github.com/schneiderkamplab/bitlinear, bitlinear/bitlinear.py `scale` with
    measures.py `AbsMedian`, per tensor for weights: `w.abs().median()`), and torch's median of an
    even count is the LOWER of the two middle values (torch.median docs), not their mean: the
    element of rank (n - 1) // 2 of the sorted |W|. Whole tensor in float32 at once (4 bytes per
    value); floored at EPS as the code's clamp_(min=eps)."""
    a = _abs32(np.ascontiguousarray(stored).reshape(-1), dtype,
               np.empty(stored.size, np.uint32))
    mid = (a.size - 1) // 2
    m = np.float32(np.partition(a, mid)[mid]) if a.size else np.float32(0)
    if not np.isfinite(m):
        raise InputError(f"{name}: non-finite weights")
    return max(m, EPS)


def threshold(multiplier: np.float32) -> np.float32:
    """The largest float32 t with fl(t / m) <= 0.5. rint(w / m) (half to even) is non-zero
    exactly when fl(|w| / m) > 0.5, and correctly rounded division is monotonic in |w|, so
    clip(rint(w / m), -1, 1) == (w > t) - (w < -t) for every float32 w."""
    m = np.float32(multiplier)
    half, up, down = np.float32(0.5), np.float32(np.inf), np.float32(0)
    t = m * half
    with np.errstate(over="ignore", under="ignore"):
        while t > 0 and t / m > half:
            t = np.nextafter(t, down)
        while (n := np.nextafter(t, up)) / m <= half:
            t = n
    return t


def scale_rule(config: dict[str, Any]) -> ScaleRule:
    """Multiply by weight_scale iff linear_class is autobitlinear, else divide (hf.md §1.4)."""
    qc = config.get("quantization_config") or {}
    return "multiply" if qc.get("linear_class") == LINEAR_CLASS["multiply"] else "divide"


def multiplier_from_scale(name: str, weight_scale: float, rule: ScaleRule,
                          checked: bool = True) -> np.float32:
    """Turn a stored HF weight_scale into our multiplier; `checked` sanity-checks magnitudes."""
    ws = np.float32(weight_scale)
    if not (math.isfinite(ws) and ws > 0):
        raise InputError(f"{name}: weight_scale {weight_scale} is not a positive finite number")
    if checked and rule == "multiply" and ws > MAX_MULTIPLY_SCALE:
        raise InputError(
            f"{name}: weight_scale {float(ws):g} contradicts the declared rule (autobitlinear "
            f"multiplies, so it should be below {MAX_MULTIPLY_SCALE:g}); "
            "pass --scale-rule to force one")
    if checked and rule == "divide" and ws < MIN_DIVIDE_SCALE:
        raise InputError(
            f"{name}: weight_scale {float(ws):g} contradicts the declared rule (bitlinear "
            f"divides, so it should be at least {MIN_DIVIDE_SCALE:g}); "
            "pass --scale-rule to force one")
    return ws if rule == "multiply" else np.float32(1) / ws


def binary_scan(stored: npt.NDArray[Any], dtype: str, name: str = "") -> tuple[float, float, int]:
    """Pass 1 of binarization over a chunk of stored values: (Σw, Σ|w|) in float64, count."""
    w = to_float32(stored.reshape(-1), dtype)
    s, a = float(np.sum(w, dtype=np.float64)), float(np.sum(np.abs(w), dtype=np.float64))
    if not (math.isfinite(s) and math.isfinite(a)):
        raise InputError(f"{name}: holds NaN or Inf values; refusing to binarize")
    return s, a, w.size


def binary_stats(parts: list[tuple[float, float, int]]) -> tuple[np.float32, np.float32]:
    """(α, β) = float32 of (Σw / n, Σ|w| / n) over the scanned chunks."""
    n = sum(p[2] for p in parts)
    return (np.float32(sum(p[0] for p in parts) / n), np.float32(sum(p[1] for p in parts) / n))


def binarize_stored(stored: npt.NDArray[Any], dtype: str, alpha: np.float32) -> npt.NDArray[np.int8]:
    """Pass 2: +1 where w > α, else −1 (float32 comparison; fl(w − α) > 0 exactly when w > α),
    in the stored shape."""
    w = to_float32(stored, dtype)
    return np.where(w > alpha, np.int8(1), np.int8(-1))
