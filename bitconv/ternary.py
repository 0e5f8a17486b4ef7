"""Stage `ternary`: weights -> codes in {-1, 0, +1} and a float32 multiplier (w = m * codes).

Three sources, one result:
- latent floats (1bitLLM, 2B4T -bf16): absmean ternarization, DESIGN.md §3:
      beta = max(mean|W|, 1e-5) in float32   (the mean accumulated in float64 for reproducibility)
      codes = clip(round_half_even(W / beta), -1, 1)
  computed in two passes over row chunks so a tensor never has to be widened whole;
- floats that already are ternary x a (|W| in {0, a}): kept as sign(W) with multiplier a; running
  absmean on them would shrink the scale by the fraction of non-zeros (bitnet-cpp.md §4);
- HF-packed uint8 + weight_scale: unpacked and checked, never re-quantized; the scale is turned
  into a multiplier by the declared rule (hf.md §1.4).
Pure numpy: no files, no families.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError

EPS = np.float32(1e-5)
ScaleRule = Literal["multiply", "divide"]
# Typical magnitudes (hf.md §1.4): autobitlinear beta ~ 0.5-5, inverse scales ~ 20-200.
MAX_MULTIPLY_SCALE = 20.0
MIN_DIVIDE_SCALE = 5.0


class AbsmeanScan:
    """Pass 1 over a latent tensor's row chunks: the absmean and whether it is already ternary."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0
        self.sum_abs = 0.0  # float64 accumulator
        self.max_abs = np.float32(0)
        self.nonzero = 0

    def add(self, w: npt.NDArray[np.float32]) -> None:
        a = np.abs(w)
        s = float(np.add.reduce(a, axis=None, dtype=np.float64))
        if not math.isfinite(s):
            raise InputError(f"{self.name}: holds NaN or Inf values; refusing to ternarize")
        self.n += a.size
        self.sum_abs += s
        if a.size:
            self.max_abs = max(self.max_abs, a.max())
        self.nonzero += int(np.count_nonzero(a))

    def result(self) -> tuple[np.float32, bool]:
        """(multiplier, already_ternary). Ternary x a iff every non-zero |w| equals max|w|."""
        if self.nonzero and self.sum_abs == self.nonzero * float(self.max_abs):
            return np.float32(self.max_abs), True
        beta = np.float32(self.sum_abs / self.n) if self.n else np.float32(0)
        return max(beta, EPS), False


def ternarize_chunk(w: npt.NDArray[np.float32], multiplier: np.float32,
                    already_ternary: bool, name: str = "") -> npt.NDArray[np.int8]:
    """Pass 2: the codes of one row chunk, given pass 1's result."""
    if already_ternary:
        a = np.abs(w)
        if not np.all((a == 0) | (a == multiplier)):
            raise InputError(f"{name}: changed while being read (not ternary on second pass)")
        return np.sign(w).astype(np.int8)
    q = np.divide(w, multiplier, dtype=np.float32)
    np.rint(q, out=q)  # round half to even, like torch.round
    np.clip(q, -1, 1, out=q)
    return q.astype(np.int8)


def ternarize(w: npt.NDArray[np.float32], name: str = "") -> tuple[npt.NDArray[np.int8], np.float32]:
    """Whole-tensor convenience: codes and multiplier of a latent float tensor."""
    scan = AbsmeanScan(name)
    scan.add(w)
    m, tern = scan.result()
    return ternarize_chunk(w, m, tern, name), m


# HF packing (transformers integrations/bitnet.py, hf.md §1.1): uint8 [R, in] holds 4R rows,
#   bits 2i..2i+1 of packed[r, c] = code(W[i*R + r, c]),  code = t + 1  (LSB first, quarter blocks)
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)


def unpack_hf_rows(packed: npt.NDArray[np.uint8], start: int, stop: int,
                   name: str = "") -> npt.NDArray[np.int8]:
    """Unpacked rows [start, stop) of an HF-packed weight, checking that no code is 3."""
    R = packed.shape[0]
    parts = []
    for i in range(start // R, (stop - 1) // R + 1):  # at most 4 quarter blocks
        lo, hi = max(start, i * R) - i * R, min(stop, (i + 1) * R) - i * R
        parts.append((packed[lo:hi] >> _SHIFTS[i]) & 3)
    codes = np.concatenate(parts) if len(parts) > 1 else parts[0]
    bad = codes == 3
    if bad.any():
        r, c = np.unravel_index(int(np.argmax(bad)), bad.shape)
        row = start + int(r)
        raise InputError(f"{name}: packed byte holds code 3 (not a ternary value) at row "
                         f"{row % R} (bits {2 * (row // R)}-{2 * (row // R) + 1}), column {c}")
    codes = codes.astype(np.int8)
    codes -= 1
    return codes


def unpack_hf(packed: npt.NDArray[np.uint8], name: str = "") -> npt.NDArray[np.int8]:
    return unpack_hf_rows(packed, 0, 4 * packed.shape[0], name)


def scale_rule(config: dict) -> ScaleRule:
    """Multiply by weight_scale iff linear_class is autobitlinear, else divide (hf.md §1.4)."""
    qc = config.get("quantization_config") or {}
    return "multiply" if qc.get("linear_class") == "autobitlinear" else "divide"


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
