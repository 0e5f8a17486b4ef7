"""The oracle: what a checkpoint's tensors pack to, by the textbook definitions, whole tensors.

`verify` (through runtime/weights.py `load_checkpoint_weights`) compares a packed file with
what this module computes from the source. It shares none of pack's fast paths (model/ternary.py
AbsmeanScan, threshold, ternarize_stored, unpack_hf_rows, binary_scan; model/dense.py's bf16 ->
f16 on the bits; model/tensors.py's row chunks and workers), so a bug in any of them makes the
file differ from the oracle and `verify` fails, instead of being reproduced on both sides.
Clarity over speed: each tensor is widened whole to float32 (float64 for the means), as the
definitions are written: 9 bytes a weight at the peak (tracemalloc: the float32 values, |W|
or the quotient, a mask or the codes). On full 2B4T shapes a 6912 x 2560 bf16 weight takes
0.35 s; the 128256 x 2560 bf16 embedding 7 s and 2.6 GB (8 bytes a value) on its way to float16.

Definitions (DESIGN.md §3, formats/hf.md §1, formats/q1_0.md §7):
- stored values: bf16 is the top half of a float32 (shift left 16), f16/f32 widen by `.astype`
  (containers/safetensors.py `to_float32`, the plain definition already);
- latent ternary (b1.58): beta = max(float32(mean |W|), 1e-5), the mean in float64;
  codes = clip(rint(W / beta), -1, 1), the division in float32, rint halves to even;
- `--scale-stat median` (b1.58 Reloaded): beta = max(|W| sorted, element (n - 1) // 2, 1e-5);
- already ternary (every non-zero |W| is max |W| = a): codes sign(W), multiplier a, never
  re-quantized (absmean would shrink a by the fraction of non-zeros);
- binary (a format without a 0 code, q1_0; BitNet eqs. 2 and 12): alpha = float32(mean W),
  codes +1 where W > alpha else -1, multiplier float32(mean |W|), means in float64;
- HF-packed uint8 [R, in] + weight_scale: row i*R + r of the codes is bits 2i..2i+1 of packed
  row r, minus 1 (quarter blocks); the multiplier from weight_scale by the declared rule;
- dense: float32, or float16 by `.astype` for the F16 tensors (embeddings), NaN/Inf and values
  beyond the float16 range refused;
- q/k rows of a GGUF `llama` in llama.cpp's interleaved RoPE order (tensors.permute_heads).

Where pack's fast path may legitimately differ: its absmean sums float64 block by block, the
oracle with numpy's pairwise sum over the whole tensor, so the float64 means may differ in their
last bits; the float32 beta then differs only when the mean lies within ~1e-16 (relative) of a
float32 rounding tie (none on any fixture: tests/test_reference.py compares every tensor). And
pack's already-ternary test compares sums (sum |W| == nonzero * max |W|), which rounding could
pass for a tensor with values one ulp below max among ~2^24 others; pack then refuses it on
its second pass ("changed while being read"), never writes it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.safetensors import MappedFiles, to_float32
from bitconv.errors import InputError
from bitconv.formats.hf import ScaleRule
from bitconv.model import ternary
from bitconv.model.checkpoint import Checkpoint
from bitconv.model.dense import F16_MAX
from bitconv.model.families.base import PlannedTensor
from bitconv.model.tensors import permute_heads
from bitconv.types import TernaryTensor


def ternarize(w: npt.NDArray[np.float32], stat: str = "mean",
              name: str = "") -> tuple[npt.NDArray[np.int8], np.float32]:
    """Codes and multiplier of latent float32 weights (absmean, or median |W| for `median`)."""
    if not np.isfinite(w).all():
        raise InputError(f"{name}: holds NaN or Inf values; refusing to ternarize")
    a = np.abs(w)
    top = a.max(initial=np.float32(0))
    if top > 0 and np.count_nonzero(a == top) == np.count_nonzero(a):  # already ternary: kept
        return np.sign(w).astype(np.int8), np.float32(top)
    if stat == "median":
        beta = np.sort(a, axis=None)[(a.size - 1) // 2] if a.size else np.float32(0)
    else:
        beta = np.float32(np.mean(a, dtype=np.float64)) if a.size else np.float32(0)
    beta = max(np.float32(beta), ternary.EPS)
    del a
    q = w / beta  # float32 / float32: the float32 quotient
    np.rint(q, out=q)  # halves to even
    np.clip(q, -1, 1, out=q)
    return q.astype(np.int8), beta


def binarize(w: npt.NDArray[np.float32], name: str = "") -> tuple[npt.NDArray[np.int8], np.float32]:
    """BitNet's 1-bit weights ("BitNet: Scaling 1-bit Transformers for Large Language Models",
    arXiv 2310.11453v1, §2.1 eqs. 1-3 and 12): codes = Sign(W − α) with α = mean(W) per tensor and
    Sign(x) = +1 if x > 0, −1 if x <= 0 (eq. 2: Sign(0) = −1, unlike llama.cpp's Q1_0 quantizer's
    `x >= 0`), multiplier β = ||W||₁ / nm = mean|W| (eq. 12). Means accumulate in float64 and are
    rounded to float32; `pack` gets the same through ternary.binary_scan/binary_stats/binarize_stored
    in row chunks. formats/q1_0.md §7."""
    if not np.isfinite(w).all():
        raise InputError(f"{name}: holds NaN or Inf values; refusing to binarize")
    alpha = np.float32(np.mean(w, dtype=np.float64))
    beta = np.float32(np.mean(np.abs(w), dtype=np.float64))
    return np.where(w > alpha, np.int8(1), np.int8(-1)), beta


def unpack_hf(packed: npt.NDArray[np.uint8], name: str = "") -> npt.NDArray[np.int8]:
    """HF-packed uint8 [R, in] -> codes [4R, in]: quarter i holds bits 2i..2i+1, code = bits - 1."""
    quarters = [(packed >> (2 * i)) & 3 for i in range(4)]
    bits = np.concatenate(quarters, axis=0)
    if (bits == 3).any():
        row, col = (int(x) for x in np.argwhere(bits == 3)[0])
        r = packed.shape[0]
        raise InputError(f"{name}: packed byte holds code 3 (not a ternary value) at row "
                         f"{row % r} (bits {2 * (row // r)}-{2 * (row // r) + 1}), column {col}")
    return bits.astype(np.int8) - 1


def dense(stored: npt.NDArray[Any], dtype: str, f16: bool, name: str,
          gguf_name: str) -> npt.NDArray[np.floating]:
    """A dense tensor as float32, or float16 for the F16 tensors, checked."""
    w = to_float32(stored, dtype)
    if not np.isfinite(w).all():
        raise InputError(f"{name}: holds NaN or Inf values")
    if not f16:
        return np.array(w, dtype=np.float32)  # its own memory, not a view of the mapped file
    if w.size and max(float(w.max()), -float(w.min())) > F16_MAX:
        raise InputError(f"{name}: values exceed the float16 range of {gguf_name}")
    return w.astype(np.float16)


def tensor(ck: Checkpoint, t: PlannedTensor, rule: ScaleRule, checked: bool = True,
           binary: bool = False,
           stat: str = "mean") -> TernaryTensor | npt.NDArray[np.floating]:
    """Planned tensor `t` of checkpoint `ck` as `pack` must write it, in GGUF row order.
    `binary`: the target format has no 0 code (q1_0); `stat`: pack's --scale-stat."""
    ref = ck.ref(t.source)
    with MappedFiles() as mf:  # what is computed from the mapped values is fresh memory
        stored = mf.view(ref)
        if t.kind != "ternary":
            return dense(stored, ref.dtype, t.kind == "f16", t.source, t.gguf_name)
        if t.scale_source is not None:  # HF-packed: unpacked and checked, never re-quantized
            sref = ck.ref(t.scale_source)
            scale = float(to_float32(mf.view(sref), sref.dtype).reshape(-1)[0])
            m = ternary.multiplier_from_scale(t.scale_source, scale, rule, checked)
            codes = unpack_hf(stored, t.source)
        else:
            w = to_float32(stored, ref.dtype)
            codes, m = binarize(w, t.source) if binary else ternarize(w, stat, t.source)
            del w
        del stored
    if t.heads:
        codes = np.ascontiguousarray(permute_heads(codes, t.shape[0] // t.heads))
    return TernaryTensor(t.gguf_name, codes, m)
