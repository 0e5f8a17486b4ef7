"""`pack` to a GGUF format: checkpoint directory -> packed GGUF, streamed tensor by tensor
(hf_export.py writes the `hf` checkpoint directory; stages/pack.py chooses between them).

The GGUF header goes out first (every packed size follows from the shapes), then each tensor
is read through an mmap in row chunks, converted, written and its pages released, so memory
stays near one chunk whatever the model size.
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitconv.containers.atomic import WriteBehind, atomic_output, check_writable, default_output
from bitconv.containers.gguf_writer import (
    F16,
    F32,
    GGUFWriter,
    TensorInfo,
    tensor_nbytes,
    write_parts,
)
from bitconv.containers.iostats import Probe
from bitconv.containers.safetensors import MappedFiles
from bitconv.errors import InputError, PackError
from bitconv.formats.base import Codec
from bitconv.formats.hf import ScaleRule
from bitconv.model import ternary
from bitconv.model.checkpoint import Checkpoint, checkpoint_name, load_checkpoint
from bitconv.model.families import detect
from bitconv.model.families.base import PlannedTensor, plan
from bitconv.model.metadata import metadata
from bitconv.model.tensors import (
    TernaryRows,
    check_scales,
    check_shapes,
    dense_chunks,
    ternary_rows,
)
from bitconv.stages.progress import byte_bar
from bitconv.types import PackResult
from bitconv.workers import Workers


def export(src: Path, codec: Codec, *, out: str | Path | None = None, force: bool = False,
           scale_rule: ScaleRule | None = None, progress: bool = False,
           threads: int | None = None, scale_stat: str = "mean",
           ck: Checkpoint | None = None) -> PackResult:
    """Write checkpoint `src` as a GGUF file in format `codec` (stages/pack.py `pack` documents
    the arguments); `ck`: the checkpoint, if the caller has loaded it already."""
    format = codec.spec.name
    out = Path(out) if out is not None else default_output(checkpoint_name(src), format)
    check_writable(out, force)
    ck = ck if ck is not None else load_checkpoint(src)
    fam = detect(ck.config)
    items = plan(ck, fam)
    check_shapes(codec.check_shape, items)
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
    probe = Probe()
    with atomic_output(out, force, write_behind=True) as f, MappedFiles() as mf, \
            Workers(threads) as workers, \
            byte_bar(total, f"pack {format}", progress) as bar:
        w = GGUFWriter(f, kvs, flat)
        for t, group in zip(items, infos):
            bar.set_postfix_str(t.gguf_name, refresh=False)
            chunks = (encoded(codec, ternary_rows(ck, mf, t, rule, scale_rule is None,
                                                  codec.spec.row_multiple, workers,
                                                  binary=0 not in codec.spec.codes,
                                                  scale_stat=scale_stat), workers)
                      if t.kind == "ternary" else dense_chunks(ck, mf, t, workers))
            try:
                write_parts(w, group, chunks)
            except PackError as e:  # codes the format cannot hold (a 0 in q1_0): name the weight
                raise PackError(f"{t.source}: {e}") from None
            mf.release(ck.ref(t.source))
            bar.update(sum(i.nbytes for i in group))
        w.close()
    probe.report(f.stats if isinstance(f, WriteBehind) else None, format=format,
                 threads=workers.threads, bytes=total)
    if extra is not None:
        with atomic_output(side, force) as f:
            f.write(extra[1])
    return PackResult(out, format, fam.name, len(items), total, side if extra else None)


def tensor_parts(codec: Codec, t: PlannedTensor) -> list[TensorInfo]:
    """The GGUF tensors planned tensor `t` becomes: a ternary weight may bring companions."""
    if t.kind == "ternary":
        return [TensorInfo(p.name, p.shape, p.ggml_type, p.nbytes)
                for p in codec.parts(t.gguf_name, t.shape)]
    gtype = F16 if t.kind == "f16" else F32
    return [TensorInfo(t.gguf_name, t.shape, gtype, tensor_nbytes(gtype, t.shape))]


def encoded(codec: Codec, src: TernaryRows, workers: Workers) -> Iterator[npt.NDArray[np.uint8]]:
    """The bytes of every part of one weight. A row-local codec encodes each chunk on the worker
    that made its codes, then what follows the blocks (tail, companions) is what it gives for
    no rows; other codecs (TL tiles span the tensor) encode as one stage beside the writer."""
    m = src.multiplier
    if not codec.spec.row_local:
        return workers.background(codec.encode(m, workers.map(src.codes, src.rows, src.done)))
    trailer = list(codec.encode(m, iter(())))

    def blocks(rs: slice) -> list[npt.NDArray[np.uint8]]:
        out = list(codec.encode(m, iter([src.codes(rs)])))
        return out[:len(out) - len(trailer)]
    return chain(chain.from_iterable(workers.map(blocks, src.rows, src.done)), trailer)


