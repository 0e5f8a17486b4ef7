"""HF: transformers' packed ternary weights (uint8, four quarter-blocks along dim 0, LSB first).

Spec: formats/hf.md. Reference: huggingface/transformers v5.23.0
src/transformers/integrations/bitnet.py (`pack_weights`, `unpack_weights`, `BitLinear`,
`AutoBitLinear`), reference/hf.md §1.1-1.4. Container: safetensors (a checkpoint directory
written by bitconv/stages/hf_export.py, or by repack_hf.py from a GGUF): `--format hf` is a target
of its own (formats/__init__.py HF), not a GGUF layout, so this module is no Codec. The checkpoint
readers (model/tensors.py) unpack HF-packed sources with `unpack_rows` here too.

Streaming: one byte row r holds rows r, r+R, r+2R, r+3R of the weight (R = out/4), so no row
chunk of codes packs on its own. Writers allocate the packed tensor (out*in/4 bytes, a quarter
of one tensor's int8 codes) and OR row chunks into it as they arrive (`pack_chunk_into`); the
whole model is never held.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats.base import check_2d, check_codes

# How a stored weight_scale gives the multiplier w = m * t (hf.md §1.4): one rule, two names.
# bitconv's options, API and messages name the operation; config.json's
# quantization_config.linear_class names the transformers class that applies it.
ScaleRule = Literal["multiply", "divide"]
LINEAR_CLASS: dict[ScaleRule, str] = {"multiply": "autobitlinear", "divide": "bitlinear"}

# W (out, in) with R = out/4 rows per quarter; quarter i = rows i*R .. (i+1)*R-1 sits at bits 2i:
#   packed[r, c]  bit  7 6         | 5 4         | 3 2       | 1 0
#                      W[3R + r, c] | W[2R + r, c] | W[R + r, c] | W[r, c]
# code = ternary + 1: -1 -> 0, 0 -> 1, +1 -> 2; code 3 is never written.
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)
_STEP = 1 << 16  # elements per unpack step: temporaries stay in L2


def check_shape(shape: tuple[int, ...]) -> None:
    """Raise PackError unless (out_features, in_features) can be written HF-packed."""
    check_2d("hf", shape)
    # transformers' buffer is (out // 4, in): padding rows would unpack to -1 (hf.md §1.1).
    if int(shape[0]) % 4 or int(shape[0]) == 0:
        raise PackError(f"hf needs out_features % 4 == 0, got {int(shape[0])}")


def packed_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """(out/4, in): the uint8 tensor a weight of `shape` becomes."""
    return int(shape[0]) // 4, int(shape[1])


def _codes_plus_one(codes: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """code = t + 1 as uint8, refusing anything outside {-1, 0, +1}."""
    # int8 -1 viewed as uint8 is 255, and 255 + 1 wraps to 0
    return check_codes("hf", codes).view(np.uint8) + np.uint8(1)


def pack_chunk_into(packed: npt.NDArray[np.uint8], start: int,
                    codes: npt.NDArray[np.int8]) -> None:
    """OR rows [start, start + len(codes)) of the weight into `packed` (R, in), which must
    start zeroed. Chunks may come in any order and sizes; each row must come exactly once."""
    R = packed.shape[0]
    q = _codes_plus_one(codes)
    stop = start + q.shape[0]
    if q.ndim != 2 or q.shape[1] != packed.shape[1] or start < 0 or stop > 4 * R:
        raise PackError(f"hf chunk of shape {q.shape} at row {start} does not fit a weight "
                        f"packed as {packed.shape}")
    row = start
    while row < stop:  # at most 4 pieces: one per quarter the chunk touches
        i, r = divmod(row, R)
        n = min(stop, (i + 1) * R) - row
        packed[r:r + n] |= q[row - start: row - start + n] << _SHIFTS[i]
        row += n


def pack(codes: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]:
    """Pack ternary codes (out, in), out % 4 == 0, as transformers' `pack_weights` does.

    Returns:
        uint8 (out/4, in).

    Example:
        >>> pack(np.array([[1], [0], [-1], [1]], np.int8)).tolist()
        [[134]]
    """
    shape = np.shape(codes)
    check_shape(shape)
    packed = np.zeros(packed_shape(shape), dtype=np.uint8)
    pack_chunk_into(packed, 0, codes)
    return packed


def unpack_rows(packed: npt.NDArray[np.uint8], start: int, stop: int,
                name: str = "") -> npt.NDArray[np.int8]:
    """Rows [start, stop) of the weight packed as uint8 (R, in), checking that no code is 3;
    rows come from at most four quarter blocks, unpacked in cache-sized steps."""
    R, cols = packed.shape
    codes = np.empty((stop - start, cols), np.uint8)  # the 2-bit codes, then codes - 1 as int8
    step = max(1, _STEP // max(cols, 1))  # rows per step: the three passes stay in cache
    for i in range(start // R, (stop - 1) // R + 1):  # at most 4 quarter blocks
        lo, hi = max(start, i * R) - i * R, min(stop, (i + 1) * R) - i * R
        for r in range(lo, hi, step):
            dst = codes[i * R + r - start:i * R + min(hi, r + step) - start]
            np.right_shift(packed[r:r + len(dst)], 2 * i, out=dst)
            np.bitwise_and(dst, 3, out=dst)
    if codes.size and codes.max() > 2:
        r, c = (int(x) for x in np.unravel_index(int(np.argmax(codes == 3)), codes.shape))
        row = start + r
        raise InputError(f"{name or 'hf data'}: packed byte holds code 3 (not a ternary value) "
                         f"at row {row % R} (bits {2 * (row // R)}-{2 * (row // R) + 1}), "
                         f"column {c}")
    np.subtract(codes, 1, out=codes)  # 0 -> 255, which is -1 as int8
    return codes.view(np.int8)


def unpack(packed: npt.NDArray[np.uint8], name: str = "") -> npt.NDArray[np.int8]:
    """Decode uint8 (R, in) into int8 codes (4R, in); InputError on a code 3.

    Example:
        >>> unpack(np.array([[134]], np.uint8)).ravel().tolist()
        [1, 0, -1, 1]
    """
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise InputError(f"hf weight must be 2-D uint8, got {packed.dtype} {packed.shape}")
    return unpack_rows(packed, 0, 4 * packed.shape[0], name)


# --- weight_scale: the two transformers conventions (hf.md §1.4) ---

def weight_scale(multiplier: float | np.float32, rule: ScaleRule) -> np.float32:
    """The float32 weight_scale that gives back `multiplier` exactly.

    "multiply" (autobitlinear, w = t * weight_scale): the multiplier itself. "divide" (bitlinear,
    w = t / weight_scale; readers compute float32(1) / weight_scale): a float32 s with
    1/s == multiplier after rounding, searched around fl(1/m). About one float32 in six has no
    such s; PackError then, since a nearby s would change the weights by one ulp.
    """
    m = np.float32(multiplier)
    if not (np.isfinite(m) and m > 0):
        raise PackError(f"hf multiplier {float(m)} is not a positive finite number")
    if rule == "multiply":
        return m
    s0 = np.float32(1) / m
    for s in (s0, *_neighbours(s0, 2)):
        if np.float32(1) / s == m:
            return np.float32(s)
    raise PackError(f"hf multiplier {float(m)!r} has no float32 inverse whose reciprocal is "
                    "exactly it; write it as autobitlinear (weight_scale multiplies)")


def _neighbours(x: np.float32, k: int) -> list[np.float32]:
    out, up, down = [], x, x
    for _ in range(k):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
        out += [up, down]
    return out


def multiplier(ws: float | np.float32, rule: ScaleRule) -> np.float32:
    """The inverse of weight_scale(): w = multiplier * t."""
    s = np.float32(ws)
    return s if rule == "multiply" else np.float32(1) / s


def scale_name(name: str) -> str:
    """`...q_proj.weight` -> `...q_proj.weight_scale`: the tensor transformers reads the scale
    of a packed weight from (the `weight_scale` parameter of its BitLinear)."""
    return name + "_scale"
