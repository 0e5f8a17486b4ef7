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

`llama.cpp` for Q2_0 / Q1_0 weights (vec_dot_type Q8_0, formats/q2_0.md §7, q1_0.md §5;
`group` = 64 / 128, the weight block; Q1_0 sums four Q8_0 blocks per block, Q2_0 two):
    per block b of 32 along K (quantize_row_q8_0, ggml-cpu/arch/x86/quants.c L302-398, AVX):
    amax = max|x_b|; d_b = fp32(fp16(amax / 127)); q_b = rint(x_b · (127 / amax))
    (all-zero block: q = 0, d = 0)
    y   = Σ_i (d_2i · (q_2i @ codes_2iᵀ) + d_2i+1 · (q_2i+1 @ codes_2i+1ᵀ)), summed over the
          weight blocks i of 64 in order (ggml_vec_dot_q2_0_q8_0_generic, ggml-cpu/quants.c
          L177-224), then · multiplier as for TQ
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError
from bitconv.runtime.packed3 import Packed3

F32 = np.float32
Array = npt.NDArray[np.float32]
MODES = ("exact", "bitnet.cpp", "llama.cpp")
INTEGER_MODES = ("exact", "bitnet.cpp")  # one integer product of whole rows: Packed3 applies
Q8K_BLOCK = 256
Q8_0_BLOCK = 32
# Weight formats whose llama.cpp dot product takes Q8_0 activations (ggml-cpu/ggml-cpu.c
# type_traits_cpu .vec_dot_type), with the weight block that sums its Q8_0 blocks first
Q8_0_GROUPS = {"q2_0": 64, "q2_0-fp16": 64, "q1_0": 128, "q1_0-fp16": 128}


def q8_0_group(fmt: str) -> int:
    """llama.cpp mode's `group` for weights in format `fmt`: their block if llama.cpp quantizes
    the activations to Q8_0 for them, 0 for Q8_K (TQ1_0/TQ2_0, and the bitnet.cpp formats)."""
    return Q8_0_GROUPS.get(fmt, 0)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def bitlinear(x: Array, codes: Array | Packed3, multiplier: np.float32, mode: str = "exact",
              group: int = 0) -> Array:
    """x (n, K) float32, codes (out, K) float32 in {-1, 0, 1} -> (n, out) float32. `group`
    (llama.cpp mode only, `q8_0_group(format)`): 0 for Q8_K activations, else Q8_0 ones summed
    per weight block of that size. The integer modes (INTEGER_MODES: one product of whole rows)
    also take the codes as Packed3, with the same result bit for bit.

    Fastest when `codes` is the transpose of a C-contiguous (K, out) array (Model stores them so):
    `q @ codes.T` is then one plain BLAS call, and llama.cpp mode's (B, 256, out) blocks a view.
    """
    if mode == "exact":
        s = F32(127) / np.maximum(np.abs(x).max(-1, keepdims=True), F32(1e-5))
        q = np.clip(np.rint(x * s), -128, 127)
        y: Array = product(q, codes) / s * multiplier
        return y
    if mode == "bitnet.cpp":
        big = np.maximum(np.abs(x).max(-1, keepdims=True).astype(np.float64), 1e-5)
        s = (127.0 / big).astype(F32)
        q = np.clip(np.rint(x * s), -128, 127)
        y = product(q, codes) * multiplier / s
        return y
    if isinstance(codes, Packed3):
        raise InputError(f"{mode} mode takes float32 codes, not packed ones")
    if mode == "llama.cpp" and group:
        y = _q8_0_dot(x, codes, group) * multiplier
        return y
    if mode == "llama.cpp":
        q, d = q8k(x)                                          # (n, B, 256), (n, B)
        cb = codes.T.reshape(q.shape[1], Q8K_BLOCK, codes.shape[0])  # (B, 256, out)
        y = (q[:, 0] @ cb[0]) * d[:, :1]                       # (n, out), exact per block
        for b in range(1, q.shape[1]):  # block by block: no (B, n, out) temporary
            y += (q[:, b] @ cb[b]) * d[:, b:b + 1]
        return y * multiplier
    raise InputError(f"unknown mode {mode!r}")


def product(q: Array, codes: Array | Packed3) -> Array:
    """q @ codesᵀ for integer activations q: exact either way (module doc; runtime/packed3.py)."""
    y: Array = codes.dot(q) if isinstance(codes, Packed3) else q @ codes.T
    return y


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


def _q8_0_dot(x: Array, codes: Array, weight_block: int) -> Array:
    """Σ over weight blocks (in order) of Σ over their Q8_0 blocks of d · integer sum."""
    q, d = q8_0(x)                                              # (n, B, 32), (n, B)
    per = weight_block // Q8_0_BLOCK
    cb = codes.T.reshape(q.shape[1], Q8_0_BLOCK, codes.shape[0])  # (B, 32, out)
    y = np.zeros((x.shape[0], codes.shape[0]), F32)
    for i in range(0, q.shape[1], per):
        sumi = (q[:, i] @ cb[i]) * d[:, i:i + 1]
        for k in range(i + 1, i + per):
            sumi += (q[:, k] @ cb[k]) * d[:, k:k + 1]
        y += sumi
    return y


def q8_0(x: Array) -> tuple[Array, Array]:
    """llama.cpp's quantize_row_q8_0 as its x86 AVX/AVX2 path computes it (ggml-cpu/arch/x86/
    quants.c L302-398): int8 values (as float32) per 32-element block, rounded half to even
    (_mm256_round_ps, _MM_ROUND_NEAREST), and each block's d as the fp16 the dot product reads."""
    v, d = q8_0_scaled(x)
    return np.rint(v), d


def q8_0_scaled(x: Array) -> tuple[Array, Array]:
    """The values q8_0 rounds, x·(127/amax) (n, B, 32), and fp32(fp16(amax/127)) (n, B). The
    reference quantize_row_q8_0_ref differs in the ulp (x·(1/d), roundf: half away from zero),
    and so does the ARM path (x·(1/d), half to even): near-ties only (formats/q2_0.md §7)."""
    n, k = x.shape
    if k % Q8_0_BLOCK:
        raise InputError(f"llama.cpp mode needs in_features % {Q8_0_BLOCK} == 0, got {k}")
    xb = x.reshape(n, k // Q8_0_BLOCK, Q8_0_BLOCK)
    amax = np.abs(xb).max(-1)                                 # (n, B)
    zero = amax == 0
    with np.errstate(divide="ignore"):
        inv = np.where(zero, F32(0), F32(127) / np.where(zero, F32(1), amax)).astype(F32)
    d = (amax / F32(127)).astype(np.float16).astype(F32)
    return (xb * inv[..., None]).astype(F32), d
