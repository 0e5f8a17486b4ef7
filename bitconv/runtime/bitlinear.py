"""BitLinear y = x·Wᵀ for ternary W = multiplier·codes, in the numerics of each engine.

Every mode computes the integer dot products Σ q·code exactly: q and codes are small integers
held in float32, and every partial sum stays below 2^24 (|q| ≤ 128, K ≤ 2^16), so float32 BLAS
is exact and fast. The modes differ in how activations become integers and how the float
scales are applied (DESIGN.md §5):

`exact` (DESIGN.md §5; transformers' BitLinear/ActQuant, hf.md §1.2):
    s = 127 / max(max|x_row|, 1e-5)               one scale per token, float32
    q = clip(round_half_even(x·s), -128, 127)
    y = (q @ codesᵀ) / s · multiplier

`bitnet.cpp` (I2_S kernels, bitnet-cpp.md §5.1-5.2):
    max = max(1e-5, max|x_row|) in double; s = float32(127 / max)
    q   = clip(round_half_even(float32(x·s)), -128, 127)
    y   = (q @ codesᵀ) · multiplier / s           evaluated left to right in float32

`llama.cpp` (TQ1_0/TQ2_0 vec_dot on Q8_K activations, llama-cpp.md §1.4, §4.4-4.5):
    per block b of 256 along K: i = argmax|x_b|; iscale = float32(-127) / x_b[i]
    q_b = minimum(rint(iscale·x_b), 127); d_b = float32(1) / iscale   (all-zero block: q = 0, d = 0)
    y   = Σ_b d_b · (q_b @ codes_bᵀ), then · multiplier (the `.scale` tensor, or fp16 d of a
          lossy file, whose decoded multiplier is that d)
    There is no per-token absmax step: llama.cpp's `bitnet` graph has no activation quantizer.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError

F32 = np.float32
Array = npt.NDArray[np.float32]
MODES = ("exact", "bitnet.cpp", "llama.cpp")
Q8K_BLOCK = 256


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def bitlinear(x: Array, codes: Array, multiplier: np.float32, mode: str = "exact") -> Array:
    """x (n, K) float32, codes (out, K) float32 in {-1, 0, 1} -> (n, out) float32.

    Fastest when `codes` is the transpose of a C-contiguous (K, out) array (Model stores them so):
    `q @ codes.T` is then one plain BLAS call, and llama.cpp mode's (B, 256, out) blocks a view.
    """
    if mode == "exact":
        s = F32(127) / np.maximum(np.abs(x).max(-1, keepdims=True), F32(1e-5))
        q = np.clip(np.rint(x * s), -128, 127)
        return (q @ codes.T) / s * multiplier
    if mode == "bitnet.cpp":
        big = np.maximum(np.abs(x).max(-1, keepdims=True).astype(np.float64), 1e-5)
        s = (127.0 / big).astype(F32)
        q = np.clip(np.rint(x * s), -128, 127)
        return (q @ codes.T) * multiplier / s
    if mode == "llama.cpp":
        q, d = q8k(x)                                          # (n, B, 256), (n, B)
        cb = codes.T.reshape(q.shape[1], Q8K_BLOCK, codes.shape[0])  # (B, 256, out)
        y = (q[:, 0] @ cb[0]) * d[:, :1]                       # (n, out), exact per block
        for b in range(1, q.shape[1]):  # block by block: no (B, n, out) temporary
            y += (q[:, b] @ cb[b]) * d[:, b:b + 1]
        return y * multiplier
    raise InputError(f"unknown mode {mode!r}")


def q8k(x: Array) -> tuple[Array, Array]:
    """llama.cpp's quantize_row_q8_K_ref: int8 values (as float32) and one float32 scale per
    256-element block; the signed element of largest magnitude maps to -127."""
    v, d = q8k_scaled(x)
    return np.minimum(np.rint(v), F32(127)), d


def q8k_scaled(x: Array) -> tuple[Array, Array]:
    """The values q8k rounds, iscale·x (n, B, 256), and the block scales d (n, B)."""
    n, k = x.shape
    if k % Q8K_BLOCK:
        raise InputError(f"llama.cpp mode needs in_features % {Q8K_BLOCK} == 0, got {k}")
    xb = x.reshape(n, k // Q8K_BLOCK, Q8K_BLOCK)
    idx = np.abs(xb).argmax(-1)[..., None]
    peak = np.take_along_axis(xb, idx, -1)                   # signed, (n, B, 1)
    zero = peak == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, F32(0), F32(-127) / np.where(zero, F32(1), peak)).astype(F32)
        d = np.where(zero, F32(0), F32(1) / np.where(zero, F32(1), iscale)).astype(F32)
    return (iscale * xb).astype(F32), d[..., 0]
