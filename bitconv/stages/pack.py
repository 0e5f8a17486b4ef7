"""Stage `pack`: checkpoint directory -> packed GGUF, streamed tensor by tensor.

The GGUF header goes out first (every packed size follows from the shapes), then each tensor
is read through an mmap in row chunks, converted, written and its pages released, so memory
stays near one chunk whatever the model size.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
from gguf import GGUFValueType as T
from tqdm import tqdm

from bitconv.containers.atomic import atomic_output, check_writable, default_output
from bitconv.containers.gguf_writer import (
    F16,
    F32,
    GGUFWriter,
    TensorInfo,
    tensor_nbytes,
)
from bitconv.containers.safetensors import MappedFiles, to_float32
from bitconv.errors import InputError, PackError
from bitconv.formats import get_format, layout_kvs
from bitconv.model import ternary
from bitconv.model.checkpoint import Checkpoint, load_checkpoint
from bitconv.model.dense import dense_part
from bitconv.model.families import detect
from bitconv.model.families.base import Family, PlannedTensor, hparam_kvs, plan
from bitconv.model.tokenizer.from_files import pre_tokenizer, tokenizer_kvs
from bitconv.stages.snapshot import checkpoint_name
from bitconv.types import KV
from bitconv.workers import Workers

CHUNK_ELEMS = 1 << 22  # ~16 MB of float32 per row chunk: one task for a worker thread
SERIAL = Workers(1)
KEEP_MAPPED = 128 << 20  # bytes of a latent tensor kept mapped from pass 1 to pass 2


@dataclass(frozen=True)
class PackResult:
    path: Path
    format: str
    family: str
    tensors: int
    nbytes: int


def pack(src: str | Path, *, format: str = "i2s", out: str | Path | None = None,
         force: bool = False, scale_rule: ternary.ScaleRule | None = None,
         progress: bool = False, threads: int | None = None,
         scale_stat: str = "mean") -> PackResult:
    """Pack a BitNet checkpoint directory into a GGUF file of the given format.

    Args:
        src: Hugging Face checkpoint directory (config.json + safetensors).
        format: a key of bitconv.formats.FORMATS.
        out: output path; default `<dir name>-<format>.gguf` in the current directory.
        force: overwrite an existing output.
        scale_rule: override the weight_scale convention (and skip its sanity check).
        threads: worker threads (default: one per core); the output bytes do not depend on it.
        scale_stat: "mean" (absmean, BitNet b1.58) or "median" (BitNet b1.58 Reloaded: the
            median of |W| as the ternarization scale; latent sources only, a research option
            that `verify` against the source reports as a multiplier mismatch).
    Example:
        >>> pack("tests/data/bitnet-b1.58-2B-4T", format="i2s").path
        PosixPath('bitnet-b1.58-2B-4T-i2s.gguf')
    """
    src = Path(src)
    codec = get_format(format)
    if scale_stat not in ("mean", "median"):
        raise InputError(f"scale statistic {scale_stat!r}: choose mean or median")
    if codec.SPEC.container == "safetensors":  # a checkpoint directory, not a GGUF
        if scale_stat != "mean":
            raise InputError("--scale-stat median writes GGUF formats only")
        from bitconv.stages import hf_export
        return hf_export.export(src, out=out, force=force, scale_rule=scale_rule,
                                progress=progress)
    out = Path(out) if out is not None else default_output(checkpoint_name(src), format)
    check_writable(out, force)
    ck = load_checkpoint(src)
    fam = detect(ck.config)
    items = plan(ck, fam)
    check_shapes(codec, items)
    infos = [tensor_parts(codec, t) for t in items]
    # a format's extra file (e.g. TL kernel configuration) goes beside `out`, under the same rules
    extra = codec.sidecar([(t.gguf_name, t.shape) for t in items if t.kind == "ternary"])
    side = out.with_name(out.name + extra[0]) if extra else out
    check_writable(side, force)
    kvs = metadata(ck, fam, codec)
    rule = scale_rule or ternary.scale_rule(dict(ck.config))
    check_scales(ck, items, rule, scale_rule is None)
    if scale_stat != "mean" and any(t.scale_source for t in items if t.kind == "ternary"):
        raise InputError(f"{src}: --scale-stat {scale_stat} needs latent (float) weights; this "
                         "checkpoint stores packed codes and scales already")
    flat = [i for group in infos for i in group]
    total = sum(i.nbytes for i in flat)
    with atomic_output(out, force) as f, MappedFiles() as mf, Workers(threads) as workers, \
            tqdm(total=total, unit="B", unit_scale=True, desc=f"pack {format}", file=sys.stderr,
                 disable=not progress, leave=False) as bar:
        w = GGUFWriter(f, kvs, flat)
        for t, group in zip(items, infos):
            bar.set_postfix_str(t.gguf_name, refresh=False)
            chunks = (encoded(codec, ternary_rows(ck, mf, t, rule, scale_rule is None,
                                                  codec.SPEC.row_multiple, workers,
                                                  binary=0 not in codec.SPEC.codes,
                                                  scale_stat=scale_stat), workers)
                      if t.kind == "ternary" else dense_chunks(ck, mf, t, workers))
            try:
                write_parts(w, group, chunks)
            except PackError as e:  # codes the format cannot hold (a 0 in q1_0): name the weight
                raise PackError(f"{t.source}: {e}") from None
            mf.release(ck.ref(t.source))
            bar.update(sum(i.nbytes for i in group))
        w.close()
    if extra is not None:
        with atomic_output(side, force) as f:
            f.write(extra[1])
    return PackResult(out, format, fam.name, len(items), total)


def check_shapes(codec: ModuleType, items: list[PlannedTensor]) -> None:
    """Every ternary weight fits the format, before anything is written (errors name the source)."""
    for t in items:
        if t.kind == "ternary":
            try:
                codec.check_shape(t.shape)
            except PackError as e:
                raise PackError(f"{t.source}: {e}") from None


def tensor_parts(codec: ModuleType, t: PlannedTensor) -> list[TensorInfo]:
    """The GGUF tensors planned tensor `t` becomes: a ternary weight may bring companions."""
    if t.kind == "ternary":
        return [TensorInfo(p.name, p.shape, p.ggml_type, p.nbytes)
                for p in codec.parts(t.gguf_name, t.shape)]
    gtype = F16 if t.kind == "f16" else F32
    return [TensorInfo(t.gguf_name, t.shape, gtype, tensor_nbytes(gtype, t.shape))]


def write_parts(w: GGUFWriter, group: list[TensorInfo], chunks: Iterator[npt.NDArray]) -> None:
    """Write byte chunks into the group's tensors in order, closing each when it is full
    (codecs never yield a chunk that straddles two parts)."""
    it = iter(group)
    part, done = next(it), 0
    for chunk in chunks:
        w.write(chunk)
        done += chunk.nbytes
        if done == part.nbytes:
            w.end_tensor()
            part, done = next(it, part), 0
    if done:
        raise PackError(f"{part.name}: codec wrote {done} of {part.nbytes} bytes")  # a codec bug


def check_scales(ck: Checkpoint, items: list[PlannedTensor], rule: ternary.ScaleRule,
                  checked: bool) -> None:
    """Every weight_scale, before the output is started: a bad last layer fails in a second."""
    with MappedFiles() as mf:
        for t in items:
            if t.scale_source:
                _multiplier(ck, mf, t, rule, checked)


def _multiplier(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor, rule: ternary.ScaleRule,
                checked: bool) -> np.float32:
    """The multiplier of an HF-packed tensor, from its one-element weight_scale."""
    assert t.scale_source is not None
    ref = ck.ref(t.scale_source)
    value = float(to_float32(mf.view(ref), ref.dtype).reshape(-1)[0])
    mf.release(ref)
    return ternary.multiplier_from_scale(t.scale_source, value, rule, checked)


def metadata(ck: Checkpoint, fam: Family, codec: ModuleType) -> list[KV]:
    """general.*, then {arch}.* hyperparameters, then tokenizer.* (deterministic order)."""
    kvs = [KV("general.architecture", T.STRING, fam.arch),
           KV("general.name", T.STRING, checkpoint_name(ck.path)),
           KV("general.file_type", T.UINT32, codec.SPEC.file_type),
           KV("general.quantization_version", T.UINT32, 2)]
    kvs += hparam_kvs(ck.config, fam.arch) + fam.extra_kvs(ck.config, fam.arch)
    weights = [(t.gguf_name, t.shape) for t in plan(ck, fam) if t.kind == "ternary"]
    kvs += layout_kvs(codec, fam.arch, weights)  # layout and TL tiling keys
    return kvs + tokenizer_kvs(ck.path, ck.config["vocab_size"], pre_tokenizer(ck.path))


def row_chunks(rows: int, cols: int, multiple: int = 1) -> Iterator[slice]:
    """Row ranges of about CHUNK_ELEMS elements, each a multiple of `multiple` rows."""
    step = max(multiple, CHUNK_ELEMS // max(cols, 1) // multiple * multiple)
    for a in range(0, rows, step):
        yield slice(a, min(a + step, rows))


def dense_chunks(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor,
                 workers: Workers = SERIAL) -> Iterator[npt.NDArray]:
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


def ternary_rows(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor, rule: ternary.ScaleRule,
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
        m = _multiplier(ck, mf, t, rule, checked)
        packed = mf.view(ref)
        return TernaryRows(m, rows, lambda rs: order(
            ternary.unpack_hf_rows(packed, rs.start, rs.stop, t.source)))
    release = lambda rs: mf.release(ref, rs)  # noqa: E731
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


def ternary_codes(ck: Checkpoint, mf: MappedFiles, t: PlannedTensor, rule: ternary.ScaleRule,
                  checked: bool = True, row_multiple: int = 1, workers: Workers = SERIAL,
                  binary: bool = False) -> tuple[np.float32, Iterator[npt.NDArray[np.int8]]]:
    """The multiplier of planned tensor `t` and its codes in row chunks, in GGUF row order."""
    src = ternary_rows(ck, mf, t, rule, checked, row_multiple, workers, binary)
    return src.multiplier, workers.map(src.codes, src.rows, done=src.done)


def encoded(codec: ModuleType, src: TernaryRows, workers: Workers) -> Iterator[npt.NDArray]:
    """The bytes of every part of one weight. A row-local codec encodes each chunk on the worker
    that made its codes, then what follows the blocks (tail, companions) is what it gives for
    no rows; other codecs (TL tiles span the tensor) encode as one stage beside the writer."""
    m = src.multiplier
    if not codec.SPEC.row_local:
        return workers.background(codec.encode(m, workers.map(src.codes, src.rows, src.done)))
    trailer = list(codec.encode(m, iter(())))

    def blocks(rs: slice) -> list[npt.NDArray]:
        out = list(codec.encode(m, iter([src.codes(rs)])))
        return out[:len(out) - len(trailer)]
    return chain(chain.from_iterable(workers.map(blocks, src.rows, src.done)), trailer)


def permute_heads(rows: npt.NDArray, head_dim: int) -> npt.NDArray:
    """HF rotate_half order -> GGUF llama interleaved order, per head (llama.cpp LlamaModel.permute):
    rows (h, 2, d/2) of each head become (h, d/2, 2)."""
    n = rows.shape[0] // head_dim
    return (rows.reshape(n, 2, head_dim // 2, -1).swapaxes(1, 2).reshape(rows.shape))
