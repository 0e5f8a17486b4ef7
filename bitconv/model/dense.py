"""Dense (non-ternary) tensors: stored floats -> the GGUF float type, checked, STEP by STEP.

Embeddings are the bulk of it (the 2B4T token_embd is 328 M bf16 values -> F16), and numpy's
float32 -> float16 cast runs at ~3 ns per value on this machine, so bf16 -> f16 is done on the
bits instead. Every bf16 normal number at least 2^-14 is exactly a f16 normal number:

    bf16  s eeeeeeee mmmmmmm       (bias 127)
    f16   s eeeee    mmmmmmm000    (bias 15)   e16 = e8 - 112, mantissa shifted left 3

so the f16 bits are ((|b| - (112 << 7)) << 3) | sign. Smaller values (f16 subnormals, which
round) go through numpy's cast; both give what `np.float16(float32 value)` gives.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.safetensors import to_float32
from bitconv.errors import InputError
from bitconv.model.ternary import BLOCK

STEP = 4 * BLOCK  # values per numpy call: fewer GIL hand-overs between the workers (ternary.py)

F16_MAX = 65504.0
BF16_F16_MAX = 0x477F  # |bf16| bits of 65280, the largest bf16 that fits f16 (next is 65536)
BF16_F16_MIN_NORMAL = 113 << 7  # |bf16| bits of 2^-14, the smallest f16 normal


def dense_part(stored: npt.NDArray[Any], dtype: str, dt: type[np.floating[Any]], name: str,
               gguf_name: str) -> npt.NDArray[np.floating[Any]]:
    """A chunk of stored values (BF16 as uint16 bits) as float16/float32, refusing NaN/Inf
    and values beyond the float16 range."""
    flat = stored.reshape(-1)
    out = np.empty(flat.size, dt)
    if dtype == "BF16" and dt is np.float16:
        for i in range(0, flat.size, STEP):
            out.view(np.uint16)[i:i + STEP] = _bf16_to_f16(flat[i:i + STEP], name, gguf_name)
        return out.reshape(stored.shape)
    for i in range(0, flat.size, STEP):
        x = to_float32(flat[i:i + STEP], dtype)
        if not np.isfinite(x).all():
            raise InputError(f"{name}: holds NaN or Inf values")
        if dt is np.float16 and np.abs(x).max(initial=0) > F16_MAX:
            raise InputError(f"{name}: values exceed the float16 range of {gguf_name}")
        out[i:i + STEP] = x
    return out.reshape(stored.shape)


def _bf16_to_f16(bits: npt.NDArray[np.uint16], name: str, gguf_name: str) -> npt.NDArray[np.uint16]:
    mag = bits & np.uint16(0x7FFF)
    top = int(mag.max(initial=0))
    if top >= 0x7F80:  # exponent all ones
        raise InputError(f"{name}: holds NaN or Inf values")
    if top > BF16_F16_MAX:
        raise InputError(f"{name}: values exceed the float16 range of {gguf_name}")
    small = mag < BF16_F16_MIN_NORMAL
    np.subtract(mag, BF16_F16_MIN_NORMAL - (1 << 7), out=mag)  # wraps for `small`: fixed below
    np.left_shift(mag, 3, out=mag)
    mag |= bits & np.uint16(0x8000)
    if small.any():
        widened = to_float32(bits[small], "BF16")
        mag[small] = widened.astype(np.float16).view(np.uint16)
    return mag
