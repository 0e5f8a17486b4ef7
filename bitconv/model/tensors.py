"""The planned tensor stream: a checkpoint's tensors as GGUF row chunks, read through an mmap.

`pack` writes what this module yields. Packed sources are unpacked and checked, never
re-quantized; latent ones are ternarized (or binarized) here with the fast exact paths of
`ternary` (DESIGN.md §3). The runtime reads a checkpoint with the same plan but not these paths:
model/reference.py computes each tensor by the textbook definitions, so `verify` checks them. Row chunks are about CHUNK_ELEMS
elements, so memory stays near one chunk per worker whatever the model size.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.safetensors import MappedFiles, to_float32
from bitconv.errors import PackError
from bitconv.formats import hf
from bitconv.formats.hf import ScaleRule
from bitconv.model import ternary
from bitconv.model.checkpoint import Checkpoint
from bitconv.model.dense import dense_part
from bitconv.model.families.base import PlannedTensor
from bitconv.workers import Workers

CHUNK_ELEMS = 1 << 22  # ~16 MB of float32 per row chunk: one task for a worker thread
SERIAL = Workers(1)
KEEP_MAPPED = 128 << 20  # bytes of a latent tensor kept mapped from pass 1 to pass 2


def check_shapes(check_shape: Callable[[tuple[int, ...]], None],
                 items: list[PlannedTensor]) -> None:
    """Every ternary weight fits the format, before anything is written (errors name the source)."""
    for t in items:
        if t.kind == "ternary":
            try:
                check_shape(t.shape)
            except PackError as e:
                raise PackError(f"{t.source}: {e}") from None


def check_scales(ck: Checkpoint, items: list[PlannedTensor], rule: ScaleRule,
                  checked: bool) -> None:
    """Every weight_scale, before the output is started: a bad last layer fails in a second."""
    with MappedFiles() as mf:
        for t in items:
            if t.scale_source:
                multiplier(ck, mf, t, rule, checked)


def multiplier(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor, rule: ScaleRule,
                checked: bool) -> np.float32:
    """The multiplier of an HF-packed tensor, from its one-element weight_scale."""
    assert t.scale_source is not None
    ref = ck.ref(t.scale_source)
    value = float(to_float32(mf.view(ref), ref.dtype).reshape(-1)[0])
    mf.release(ref)
    return ternary.multiplier_from_scale(t.scale_source, value, rule, checked)


def row_chunks(rows: int, cols: int, multiple: int = 1) -> Iterator[slice]:
    """Row ranges of about CHUNK_ELEMS elements, each a multiple of `multiple` rows."""
    step = max(multiple, CHUNK_ELEMS // max(cols, 1) // multiple * multiple)
    for a in range(0, rows, step):
        yield slice(a, min(a + step, rows))


def dense_chunks(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor,
                 workers: Workers = SERIAL) -> Iterator[npt.NDArray[Any]]:
    """A dense tensor as float16/float32 row chunks, checked finite and in range."""
    ref = ck.ref(t.source)
    dt = np.float16 if t.kind == "f16" else np.float32
    if len(t.shape) < 2:
        yield dense_part(mf.view(ref), ref.dtype, dt, t.source, t.gguf_name)
        return
    rows, cols = t.shape[0], int(np.prod(t.shape[1:]))
    yield from workers.map(lambda rs: dense_part(mf.view(ref, rs), ref.dtype, dt, t.source,
                                                 t.gguf_name),
                           row_chunks(rows, cols), done=lambda rs: mf.release(ref, rs))


@dataclass(frozen=True)
class TernaryRows:
    """A ternary weight ready to stream: its multiplier, its row chunks (whole heads when q/k
    are permuted, whole row tiles of the format) and how to make one chunk's codes in GGUF row
    order; `codes` is pure and thread-safe, `done` releases a chunk's input pages."""

    multiplier: np.float32
    rows: list[slice]
    codes: Callable[[slice], npt.NDArray[np.int8]]
    done: Callable[[slice], None] | None = None


def ternary_rows(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor, rule: ScaleRule,
                 checked: bool = True, row_multiple: int = 1, workers: Workers = SERIAL,
                 binary: bool = False, scale_stat: str = "mean") -> TernaryRows:
    """Packed sources are unpacked and checked, never re-quantized; latent ones take a first
    pass (on `workers`) for the absmean, here, before any code is made. `binary` (a format that
    holds no 0 code, q1_0): latent floats are binarized as BitNet (1-bit) does instead,
    Sign(W − mean W) with multiplier mean|W| (formats/q1_0.md §7); already-binary floats ±a
    come out as sign(W) and a either way."""
    ref = ck.ref(t.source)
    out_f, in_f = t.shape
    head = out_f // t.heads if t.heads else 1
    step = math.lcm(head, row_multiple)  # whole heads to permute, whole row tiles to pack
    order = (lambda c: permute_heads(c, head)) if t.heads else (lambda c: c)
    rows = list(row_chunks(out_f, in_f, step))
    if t.scale_source:
        m = multiplier(ck, mf, t, rule, checked)
        packed = mf.view(ref)
        return TernaryRows(m, rows, lambda rs: order(
            hf.unpack_rows(packed, rs.start, rs.stop, t.source)))
    release = lambda rs: mf.release(ref, rs)
    if binary:
        alpha, beta = ternary.binary_stats(list(workers.map(
            lambda rs: ternary.binary_scan(mf.view(ref, rs), ref.dtype, t.source),
            row_chunks(out_f, in_f))))
        return TernaryRows(beta, rows, lambda rs: order(ternary.binarize_stored(
            mf.view(ref, rs), ref.dtype, alpha)), release)
    scan = ternary.AbsmeanScan(t.source)
    # pass 2 re-reads the tensor: a small one stays mapped between the passes (no second
    # round of page faults), a huge one is released chunk by chunk to bound the resident set
    keep = ref.nbytes <= KEEP_MAPPED
    for part in workers.map(lambda rs: ternary.scan_part(mf.view(ref, rs), ref.dtype, t.source),
                            row_chunks(out_f, in_f), done=None if keep else release):
        scan.merge(part)
    m, already = scan.result()
    if scale_stat == "median" and not already:  # BitNet b1.58 Reloaded: median |W| (whole tensor)
        m = ternary.abs_median(mf.view(ref), ref.dtype, t.source)
    return TernaryRows(m, rows, lambda rs: order(ternary.ternarize_stored(
        mf.view(ref, rs), ref.dtype, m, already, t.source)), release)


def ternary_codes(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor, rule: ScaleRule,
                  checked: bool = True, row_multiple: int = 1, workers: Workers = SERIAL,
                  binary: bool = False) -> tuple[np.float32, Iterator[npt.NDArray[np.int8]]]:
    """The multiplier of planned tensor `t` and its codes in row chunks, in GGUF row order."""
    src = ternary_rows(ck, mf, t, rule, checked, row_multiple, workers, binary)
    return src.multiplier, workers.map(src.codes, src.rows, done=src.done)


def permute_heads(rows: npt.NDArray[Any], head_dim: int) -> npt.NDArray[Any]:
    """HF rotate_half order -> GGUF llama interleaved order, per head (llama.cpp LlamaModel.permute):
    rows (h, 2, d/2) of each head become (h, d/2, 2)."""
    n = rows.shape[0] // head_dim
    return (rows.reshape(n, 2, head_dim // 2, -1).swapaxes(1, 2).reshape(rows.shape))
