"""What llama.cpp's fp16-d block types share (TQ1_0, TQ2_0: 256 elements, d stored last; Q2_0:
64 elements, d stored first), and the two ways bitconv writes the per-tensor multiplier (exact
in an F32 `.scale` companion with d = 1, or rounded into every block's d).

Specs: formats/tq1_0.md, formats/tq2_0.md, formats/q2_0.md. Reference:
ggml-org/llama.cpp@0c1e57098 ggml/src/ggml-common.h L180-192, L272-288 (block structs),
ggml/src/ggml-quants.c L74-110, L2316-2470. The block size and where d sits come from the
codec's FormatSpec (block_elems, d_first). A codec module supplies its block-body packers; this
module does the rest:

    pack_qs(q)    (n_blocks, block_elems) uint8 digits 0..2 (= ternary + 1) -> (n_blocks, body)
    unpack_qs(b)  the inverse; digits may be 3 where the body holds one (caller reports it)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError, PackError
from bitconv.formats.base import FormatSpec, Part

F32 = 0                           # ggml type of the `.scale` companion
D_ONE = np.uint16(0x3C00)         # fp16 1.0: the d of every block of the lossless variant

U8 = npt.NDArray[np.uint8]
PackQs = Callable[[U8], U8]


def check_shape(spec: FormatSpec, shape: tuple[int, ...]) -> None:
    """PackError unless `shape` is (out_features, in_features) with in_features a multiple of
    the block (256 for TQ, 64 for Q2_0)."""
    if len(shape) != 2:
        raise PackError(f"{spec.name} packs 2-D weights, got shape {tuple(int(d) for d in shape)}")
    if int(shape[1]) % spec.block_elems:
        raise PackError(f"{spec.name} needs in_features % {spec.block_elems} == 0, "
                        f"got {int(shape[1])}")


def nbytes(spec: FormatSpec, shape: tuple[int, int]) -> int:
    return int(shape[0]) * int(shape[1]) // spec.block_elems * spec.block_bytes


def _d_cols(spec: FormatSpec) -> tuple[slice, slice]:
    """(d, body) byte columns of a block: d is the first two bytes (Q2_0) or the last (TQ)."""
    return (slice(0, 2), slice(2, None)) if spec.d_first else (slice(-2, None), slice(0, -2))


def scale_name(name: str) -> str:
    """`blk.0.attn_q.weight` -> `blk.0.attn_q.scale`: the name llama.cpp's graphs look up
    (LLM_TN `tn(LLM_TENSOR_ATTN_Q, "scale", i)`)."""
    return name.removesuffix(".weight") + ".scale"


def weight_part(spec: FormatSpec, name: str, shape: tuple[int, int]) -> Part:
    return Part(name, spec.ggml_type, (int(shape[0]), int(shape[1])), nbytes(spec, shape))


def scale_part(name: str) -> Part:
    return Part(scale_name(name), F32, (1,), 4)


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


def pack_rows(spec: FormatSpec, pack_qs: PackQs, codes: npt.NDArray[np.integer],
              d_bits: np.uint16) -> U8:
    """Whole rows of ternary codes (rows, K) -> rows*K/block blocks, each `body | d` (TQ) or
    `d | body` (Q2_0), d fp16 LE."""
    codes = np.asarray(codes)
    check_shape(spec, codes.shape)
    if codes.dtype.kind not in "iu":
        raise PackError(f"{spec.name} codes must be an integer array, got dtype {codes.dtype}")
    if codes.dtype != np.int8:
        if codes.size and (codes.min() < -1 or codes.max() > 1):
            _raise_not_ternary(spec, codes)
        codes = codes.astype(np.int8)
    q = np.ascontiguousarray(codes).view(np.uint8) + np.uint8(1)   # -1 -> 255 + 1 wraps to 0
    if q.size and q.max() > 2:
        _raise_not_ternary(spec, codes)
    n, dc, body = q.size // spec.block_elems, *_d_cols(spec)
    out = np.empty((n, spec.block_bytes), dtype=np.uint8)           # (n_blocks, body + 2)
    out[:, body] = pack_qs(q.reshape(n, spec.block_elems))
    out[:, dc] = np.array([d_bits], dtype="<u2").view(np.uint8)     # d, little-endian
    return out.reshape(-1)


def _raise_not_ternary(spec: FormatSpec, codes: npt.NDArray[np.integer]) -> None:
    flat = codes.reshape(-1)
    first = int(np.argmax((flat < -1) | (flat > 1)))
    raise PackError(f"{spec.name} codes must be -1, 0 or +1, got {int(flat[first])} "
                    f"at element {first}")


def unpack_rows(spec: FormatSpec, unpack_qs: PackQs, data: U8,
                shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.uint16]]:
    """Tensor bytes -> (codes of `shape`, fp16 bits of each block's d). InputError on a wrong
    length or a code 3 (TQ2_0); unpack_qs raises for bytes it cannot read (TQ1_0)."""
    shape = (int(shape[0]), int(shape[1]))
    if shape[1] % spec.block_elems:
        raise InputError(f"{spec.name} needs in_features % {spec.block_elems} == 0, "
                         f"got {shape[1]}")
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    expected = nbytes(spec, shape)
    if data.size != expected:
        raise InputError(f"{spec.name} data is {data.size} bytes, expected {expected} "
                         f"for shape {shape}")
    blocks, dc, body = data.reshape(-1, spec.block_bytes), *_d_cols(spec)  # (n_blocks, 2 + body)
    q = unpack_qs(blocks[:, body])                                 # (n_blocks, block) digits
    if q.size and q.max() > 2:
        first = int(np.argmax(q.reshape(-1) > 2))
        raise InputError(f"{spec.name} data holds code 3 (not a ternary value) at element {first}")
    d_bits = np.ascontiguousarray(blocks[:, dc]).view("<u2").reshape(-1).astype(np.uint16)
    q -= 1                                                         # 0 wraps to 255 = int8 -1
    return q.view(np.int8).reshape(shape), d_bits


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


# --- the two variants of the registry contract (bitconv/formats/__init__.py) ---

def encode_lossless(spec: FormatSpec, pack_qs: PackQs, multiplier: float | np.float32,
                    chunks: Iterable[npt.NDArray[np.int8]]) -> Iterator[U8]:
    """Blocks with d = 1, then the `.scale` part: the multiplier as one float32 LE."""
    for c in chunks:
        yield pack_rows(spec, pack_qs, c, D_ONE)
    yield np.array([multiplier], dtype="<f4").view(np.uint8)


def decode_lossless(spec: FormatSpec, unpack_qs: PackQs, datas: Sequence[U8],
                    shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], np.float32]:
    codes, d_bits = unpack_rows(spec, unpack_qs, datas[0], shape)
    live = np.flatnonzero(_nonzero_blocks(spec, codes) & (d_bits != D_ONE))
    if live.size:
        raise InputError(f"{spec.name} blocks must have d = 1 beside a .scale tensor, got "
                         f"d = {_f16(d_bits[live[0]])} at block {int(live[0])}")
    scale = np.asarray(datas[1], dtype=np.uint8).reshape(-1)
    if scale.size != 4:
        raise InputError(f"{spec.name} .scale tensor is {scale.size} bytes, expected 4 (one F32)")
    return codes, np.frombuffer(scale.tobytes(), dtype="<f4")[0]


def encode_lossy(spec: FormatSpec, pack_qs: PackQs, multiplier: float | np.float32,
                 chunks: Iterable[npt.NDArray[np.int8]]) -> Iterator[U8]:
    """Blocks with d = fp16(multiplier) in every block, as llama.cpp's own quantizer writes
    ternary x multiplier; no companion tensor."""
    d_bits = fp16_d(spec, multiplier)
    for c in chunks:
        yield pack_rows(spec, pack_qs, c, d_bits)


def decode_lossy(spec: FormatSpec, unpack_qs: PackQs, datas: Sequence[U8],
                 shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], np.float32]:
    """(codes, float32(fp16 d)): the multiplier exactly as llama.cpp applies it."""
    codes, d_bits = unpack_rows(spec, unpack_qs, datas[0], shape)
    return codes, np.float32(np.uint16(single_d(spec, codes, d_bits)).view(np.float16))


def codec_module(qualname: str, doc: str, **surface: Any) -> ModuleType:
    """A second codec living in a format's module (the lossy variant), as the module-shaped
    object the registry holds: SPEC, check_shape, parts, encode, decode, sidecar."""
    mod = ModuleType(qualname, doc)
    mod.__dict__.update(surface)
    return mod


def lossy_codec(qualname: str, doc: str, spec: FormatSpec, pack_qs: PackQs, unpack_qs: PackQs,
                **helpers: Any) -> ModuleType:
    """The `-fp16` variant of an fp16-d type (d = fp16(multiplier) in every block, no companion
    tensor) as a registry codec; `helpers` are the format's own nbytes/pack/unpack."""
    def check(shape: tuple[int, int]) -> None:
        check_shape(spec, shape)

    def parts(name: str, shape: tuple[int, int]) -> tuple[Part, ...]:
        return (weight_part(spec, name, shape),)

    def encode(multiplier: float | np.float32,
               chunks: Iterable[npt.NDArray[np.int8]]) -> Iterator[U8]:
        return encode_lossy(spec, pack_qs, multiplier, chunks)

    def decode(datas: Sequence[U8], shape: tuple[int, int]) -> tuple[npt.NDArray[np.int8], np.float32]:
        return decode_lossy(spec, unpack_qs, datas, shape)

    def sidecar(weights: Sequence[tuple[str, tuple[int, int]]]) -> tuple[str, bytes] | None:
        return None

    return codec_module(qualname, doc, SPEC=spec, check_shape=check, parts=parts, encode=encode,
                        decode=decode, sidecar=sidecar, **helpers)
