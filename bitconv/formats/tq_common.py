"""What llama.cpp's fp16-d block types share (TQ1_0, TQ2_0: 256 elements, d stored last; Q2_0:
64 elements and Q1_0: 128, d stored first), and the two ways bitconv writes the per-tensor
multiplier (exact in an F32 `.scale` companion with d = 1, or rounded into every block's d):
one codec class, Blocks, whose two instances per type are the `<type>` and `<type>-fp16` names.

Specs: formats/tq1_0.md, formats/tq2_0.md, formats/q2_0.md, formats/q1_0.md. Reference:
ggml-org/llama.cpp@0c1e57098 ggml/src/ggml-common.h L180-192, L272-288 (block structs),
ggml/src/ggml-quants.c L74-110, L2316-2470. The block size and where d sits come from the
codec's FormatSpec (block_elems, d_first). A codec module supplies its block-body packers; this
module does the rest:

    pack_qs(q)    (n_blocks, block_elems) uint8 digits 0..2 (= ternary + 1) -> (n_blocks, body)
    unpack_qs(b)  the inverse; digits may be 3 where the body holds one (caller reports it)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats.base import (
    I8,
    U8,
    Codec,
    FormatSpec,
    Part,
    Shape,
    check_digits,
    check_in_features,
    check_length,
    integer_codes,
    refuse_codes,
)
from bitconv.formats.tiling import Tiling

F32 = 0                           # ggml type of the `.scale` companion
D_ONE = np.uint16(0x3C00)         # fp16 1.0: the d of every block of the lossless variant

PackQs = Callable[[U8], U8]


class Blocks(Codec):
    """An fp16-d block type (see the module doc), in one of its two variants: spec.lossless,
    d = 1 in every block and the exact float32 multiplier in an F32 [1] `<name>.scale`
    companion, which llama.cpp multiplies in after the matmul; or (the `-fp16` name) llama.cpp's
    own form, d = fp16(multiplier) in every block and no companion, which reads back
    float32(fp16(m))."""

    def __init__(self, spec: FormatSpec, pack_qs: PackQs, unpack_qs: PackQs) -> None:
        super().__init__(spec)
        self.pack_qs, self.unpack_qs = pack_qs, unpack_qs

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """n / block_elems * block_bytes; InputError unless the last dimension is whole blocks."""
        if int(shape[-1]) % self.spec.block_elems:
            raise InputError(f"{self.spec.type_name} needs the last dimension to be a multiple "
                             f"of {self.spec.block_elems}, got shape {shape}")
        return math.prod(shape) // self.spec.block_elems * self.spec.block_bytes

    def parts(self, name: str, shape: Shape) -> tuple[Part, ...]:
        """The weight, then (lossless) its F32 [1] `.scale` companion."""
        weight = super().parts(name, shape)
        return weight + (Part(scale_name(name), F32, (1,), 4),) if self.spec.lossless else weight

    def encode(self, multiplier: float | np.float32, chunks: Iterable[I8]) -> Iterator[U8]:
        """Lossless: blocks with d = 1, then the `.scale` part, the multiplier as one float32
        LE. Lossy: blocks with d = fp16(multiplier), as llama.cpp's own quantizer writes
        ternary x multiplier."""
        if not self.spec.lossless:
            d_bits = fp16_d(self.spec, multiplier)
            for c in chunks:
                yield self.pack_rows(c, d_bits)
            return
        for c in chunks:
            yield self.pack_rows(c, D_ONE)
        yield np.array([multiplier], dtype="<f4").view(np.uint8)

    def pack_rows(self, codes: npt.NDArray[np.integer], d_bits: np.uint16) -> U8:
        """Whole rows of codes (rows, K) -> rows*K/block blocks, each `body | d` (TQ) or
        `d | body` (Q2_0, Q1_0), d fp16 LE; PackError for a code the layout cannot hold."""
        spec, codes = self.spec, np.asarray(codes)
        self.check_shape(codes.shape)
        codes = integer_codes(spec, codes)
        if codes.dtype != np.int8:
            if codes.size and (codes.min() < -1 or codes.max() > 1):
                refuse_codes(spec, codes)
            codes = codes.astype(np.int8)
        q = np.ascontiguousarray(codes).view(np.uint8) + np.uint8(1)   # -1 -> 255 + 1 wraps to 0
        if q.size and (q.max() > 2 or (0 not in spec.codes and (q == 1).any())):
            refuse_codes(spec, codes)
        n, dc, body = q.size // spec.block_elems, *_d_cols(spec)
        out = np.empty((n, spec.block_bytes), dtype=np.uint8)           # (n_blocks, body + 2)
        out[:, body] = self.pack_qs(q.reshape(n, spec.block_elems))
        out[:, dc] = np.array([d_bits], dtype="<u2").view(np.uint8)     # d, little-endian
        return out.reshape(-1)

    def unpack_rows(self, data: U8, shape: tuple[int, ...]) -> tuple[I8, npt.NDArray[np.uint16]]:
        """Tensor bytes -> (codes of `shape`, fp16 bits of each block's d). InputError on a wrong
        length or a code 3 (TQ2_0, Q2_0); unpack_qs raises for bytes it cannot read (TQ1_0)."""
        spec = self.spec
        shape = check_in_features(spec, shape)
        expected = self.nbytes(shape)
        data = check_length(spec, data, shape, expected)
        blocks, dc, body = data.reshape(-1, spec.block_bytes), *_d_cols(spec)  # (n_blocks, 2 + body)
        q = self.unpack_qs(blocks[:, body])                            # (n_blocks, block) digits
        check_digits(spec, q)
        d_bits = np.ascontiguousarray(blocks[:, dc]).view("<u2").reshape(-1).astype(np.uint16)
        q -= 1                                                         # 0 wraps to 255 = int8 -1
        return q.view(np.int8).reshape(shape), d_bits

    def decode(self, datas: Sequence[U8], shape: Shape,
               tiling: Tiling | None = None) -> tuple[I8, np.float32]:
        """Lossless: the codes and the `.scale`, every live block's d = 1. Lossy: (codes,
        float32(fp16 d)), the multiplier exactly as llama.cpp applies it."""
        spec = self.spec
        codes, d_bits = self.unpack_rows(datas[0], shape)
        if not spec.lossless:
            return codes, np.float32(np.uint16(single_d(spec, codes, d_bits)).view(np.float16))
        live = np.flatnonzero(_nonzero_blocks(spec, codes) & (d_bits != D_ONE))
        if live.size:
            raise InputError(f"{spec.name} blocks must have d = 1 beside a .scale tensor, got "
                             f"d = {_f16(d_bits[live[0]])} at block {int(live[0])}")
        scale = np.asarray(datas[1], dtype=np.uint8).reshape(-1)
        if scale.size != 4:
            raise InputError(f"{spec.name} .scale tensor is {scale.size} bytes, expected 4 "
                             "(one F32)")
        return codes, np.frombuffer(scale.tobytes(), dtype="<f4")[0]


def _d_cols(spec: FormatSpec) -> tuple[slice, slice]:
    """(d, body) byte columns of a block: d is the first two bytes (Q2_0) or the last (TQ)."""
    return (slice(0, 2), slice(2, None)) if spec.d_first else (slice(-2, None), slice(0, -2))


def scale_name(name: str) -> str:
    """`blk.0.attn_q.weight` -> `blk.0.attn_q.scale`: the name llama.cpp's graphs look up
    (LLM_TN `tn(LLM_TENSOR_ATTN_Q, "scale", i)`)."""
    return name.removesuffix(".weight") + ".scale"


def fp16_d(spec: FormatSpec, multiplier: float | np.float32) -> np.uint16:
    """The fp16 bits of d = fp16(multiplier), round to nearest even as ggml's GGML_FP32_TO_FP16;
    PackError where fp16 cannot hold it at all."""
    m = np.float32(multiplier)
    with np.errstate(over="ignore"):
        d = m.astype(np.float16)
    if not np.isfinite(d) or (d == 0 and m != 0):
        lossless = spec.name.removesuffix("-fp16")
        raise PackError(f"{spec.name} cannot hold multiplier {float(m)!r} in an fp16 d "
                        f"(it becomes {float(d)}); use --format {lossless}")
    return np.uint16(d.view(np.uint16))


def _nonzero_blocks(spec: FormatSpec, codes: npt.NDArray[np.int8]) -> npt.NDArray[np.bool_]:
    return np.asarray(codes.reshape(-1, spec.block_elems).any(axis=1))


def _f16(bits: np.uint16 | int) -> float:
    return float(np.uint16(bits).view(np.float16))


def single_d(spec: FormatSpec, codes: npt.NDArray[np.int8],
             d_bits: npt.NDArray[np.uint16]) -> np.uint16:
    """The one d of a per-tensor-scaled tensor. A block whose codes are all 0 has no say (its d
    scales nothing; llama.cpp's quantizer writes d = 0 there); others must agree bit for bit."""
    live = np.flatnonzero(_nonzero_blocks(spec, codes))
    if live.size == 0:
        return np.uint16(d_bits[0]) if d_bits.size else D_ONE
    bits = d_bits[live]
    odd = np.flatnonzero(bits != bits[0])
    if odd.size:
        raise InputError(f"{spec.name} blocks have different scales: d = {_f16(bits[0])} at "
                         f"block {int(live[0])}, {_f16(bits[odd[0]])} at block "
                         f"{int(live[odd[0]])}; bitconv reads one scale per tensor")
    if not np.isfinite(np.uint16(bits[0]).view(np.float16)):
        raise InputError(f"{spec.name} block {int(live[0])} has d = {_f16(bits[0])}")
    return np.uint16(bits[0])
