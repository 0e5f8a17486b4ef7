"""Stage `repack`: a packed model -> another registered format, without the source checkpoint.

GGUF -> GGUF: the header keeps every key in order except `general.file_type` (the target's) and
the layout and TL tiling keys (formats/base.py `Codec.kvs`); then each tensor in file order: a
ternary weight is decoded by the codec that wrote it (codes + float32 multiplier; its companions,
such as a `.scale`, go with it; a TL input with its own tiling, bitconv/containers/kernel_config.py) and encoded by the target codec in row chunks; any other tensor is copied
byte for byte. One tensor is in memory at a time. GGUF -> `hf`: repack_hf.py. A checkpoint
directory (an `hf` export) is packed, as `pack` does.

Lossless wherever the target holds the values: every format keeps the codes, and all but the
`-fp16` TQ variants keep the float32 multiplier. Those round it to an fp16 `d`: a lossy target is
refused, before any output exists, unless every multiplier is exact in fp16 or `allow_lossy`
(formats/README.md §Repack).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitconv.containers.atomic import atomic_output, check_writable, default_output
from bitconv.containers.gguf_reader import (
    kv_records,
    read_gguf,
    tensor_bytes,
)
from bitconv.containers.gguf_writer import GGUFWriter, TensorInfo, write_parts
from bitconv.containers.packed_gguf import PackedGGUF, read_packed
from bitconv.containers.safetensors import MappedFiles
from bitconv.errors import InputError, OutputError, PackError
from bitconv.formats import HF
from bitconv.formats.base import Codec
from bitconv.formats.registry import get_codec
from bitconv.formats.tl_common import KV_KEY
from bitconv.gguf_values import GGUFValueType as T
from bitconv.model import ternary
from bitconv.model.checkpoint import Checkpoint, load_checkpoint
from bitconv.model.families import detect
from bitconv.model.families.base import plan
from bitconv.model.tensors import row_chunks, ternary_rows
from bitconv.runtime.weights import stored
from bitconv.stages import gguf_export, hf_export
from bitconv.stages.progress import byte_bar
from bitconv.stages.repack_hf import export_hf
from bitconv.types import KV, RepackResult

BYTE_CHUNK = 1 << 24


def repack(src: str | Path, *, format: str, out: str | Path | None = None, force: bool = False,
           allow_lossy: bool = False, progress: bool = False,
           kernel_config: str | Path | None = None) -> RepackResult:
    """Rewrite a packed GGUF (or an `hf` checkpoint directory) in another format.

    Args:
        src: a GGUF file bitconv can read, or a checkpoint directory (packed as `pack` does).
        format: one of bitconv.formats.FORMAT_NAMES.
        out: output file (directory for `hf`); default `<general.name>-<format>.gguf` (`-hf`)
            in the current directory.
        force: overwrite an existing output.
        allow_lossy: let a `-fp16` target round multipliers that fp16 cannot hold exactly.
        kernel_config: a TL input's kernel_config.ini (default: its sidecar, else its metadata
            key; bitconv/containers/kernel_config.py). A TL output is tiled as `pack` tiles it.
    Example:
        >>> repack("m-i2s.gguf", format="tq2_0", out="m-tq2_0.gguf").path
        PosixPath('m-tq2_0.gguf')
    """
    src, codec = Path(src), None if format == HF else get_codec(format)
    if src.is_dir():
        return _pack_dir(src, format, codec, out, force, allow_lossy, progress)
    gf = read_gguf(src)
    if "general.architecture" not in gf.kvs:
        raise InputError(f"{src}: no general.architecture in the metadata")
    source = read_packed(gf, kernel_config, prefix=f"{src}: ")
    out = Path(out) if out is not None else default_output(output_stem(source), format)
    if os.path.realpath(out) == os.path.realpath(src):  # Path.resolve raises on a loop
        raise OutputError(f"{out}: is the input; choose another output")
    if codec is None:
        return export_hf(source, out, force=force, progress=progress)
    weights = source.weights()
    for name, shape in weights:
        try:
            codec.check_shape(shape)
        except PackError as e:
            raise PackError(f"{name}: {e}") from None
    extra = codec.sidecar(weights)
    side = out.with_name(out.name + extra[0]) if extra else None
    for p in (out, side):
        if p is not None:
            check_writable(p, force)
    max_error, worst = check_loss(source.multipliers(), codec, allow_lossy)
    total = _write(source, codec, out, force, progress)
    if extra is not None and side is not None:
        with atomic_output(side, force) as f:
            f.write(extra[1])
    return RepackResult(out, source.format, format, len(source.tensors), total, max_error, worst,
                        side)


def output_stem(source: PackedGGUF) -> str:
    """A packed file's name for its outputs: its `general.name` when that is a plain file name."""
    name = str(source.gf.kvs.get("general.name") or "")
    if not name or "/" in name or name.startswith("."):
        name = source.gf.path.stem
    return name


def check_loss(multipliers: Iterable[tuple[str, np.float32]], codec: Codec,
               allow_lossy: bool) -> tuple[float, str | None]:
    """The largest relative change the target makes to a multiplier, and where; PackError at
    the first inexact one unless `allow_lossy`. Lossless targets are not asked."""
    if codec.spec.lossless:
        return 0.0, None
    fmt, worst, where = codec.spec.name, 0.0, None
    for name, m in multipliers:
        try:
            s = stored(codec, m)
        except PackError as e:
            raise PackError(f"{name}: {e}") from None
        if s == m:
            continue
        if not allow_lossy:
            raise PackError(f"{name}: multiplier {float(m)!r} is not exact in {fmt}, whose fp16 "
                            f"d would be {float(s)!r}; pass --allow-lossy to round it, or use "
                            f"--format {fmt.removesuffix('-fp16')}")
        rel = abs(float(s) - float(m)) / abs(float(m))
        if rel > worst:
            worst, where = rel, name
    return worst, where


def target_kvs(source: PackedGGUF, codec: Codec) -> list[KV]:
    """The source's metadata in order, with the target's general.file_type, layout key and TL
    tiling key (where `pack` puts them: before the tokenizer keys; the tiling is `pack`'s)."""
    gf = source.gf
    arch = str(gf.kvs["general.architecture"])
    drop, pending = {f"{arch}.tensor_data_layout", KV_KEY}, codec.kvs(arch, source.weights())
    out: list[KV] = []
    for kv in kv_records(gf):
        if kv.key in drop:
            continue
        if kv.key.startswith("tokenizer.") and pending:
            out, pending = out + pending, []
        if kv.key == "general.file_type":
            kv = KV(kv.key, T.UINT32, codec.spec.file_type)
        out.append(kv)
    return out + pending


def _write(source: PackedGGUF, codec: Codec, out: Path, force: bool, progress: bool) -> int:
    groups = [[TensorInfo(p.name, p.shape, p.ggml_type, p.nbytes)
               for p in codec.parts(t.name, t.shape)] if t.name in source.codecs
              else [TensorInfo(t.name, t.shape, t.ggml_type, t.nbytes)] for t in source.tensors]
    flat = [i for g in groups for i in g]
    total = sum(i.nbytes for i in flat)
    with atomic_output(out, force, write_behind=True) as f, \
            byte_bar(total, f"repack {codec.spec.name}", progress) as bar:
        w = GGUFWriter(f, target_kvs(source, codec), flat, alignment=source.gf.alignment)
        for t, group in zip(source.tensors, groups):
            bar.set_postfix_str(t.name, refresh=False)
            if t.name in source.codecs:
                codes, m = source.decode(t)
                chunks = codec.encode(m, code_chunks(codes, codec.spec.row_multiple))
            else:
                chunks = byte_chunks(tensor_bytes(source.gf, t))
            try:
                write_parts(w, group, chunks)
            except PackError as e:  # codes the target cannot hold (a 0 in q1_0)
                raise PackError(f"{t.name}: {e}") from None
            bar.update(sum(i.nbytes for i in group))
        w.close()
    return total


def code_chunks(codes: npt.NDArray[np.int8], multiple: int = 1) -> Iterator[npt.NDArray[np.int8]]:
    """A decoded weight in the row chunks `pack` would stream it in."""
    rows, cols = codes.shape
    for rs in row_chunks(rows, cols, multiple):
        yield codes[rs]


def byte_chunks(data: npt.NDArray[np.uint8]) -> Iterator[npt.NDArray[np.uint8]]:
    for a in range(0, data.size, BYTE_CHUNK):
        yield data[a:a + BYTE_CHUNK]


def _pack_dir(src: Path, format: str, codec: Codec | None, out: str | Path | None, force: bool,
              allow_lossy: bool, progress: bool) -> RepackResult:
    """A checkpoint directory: packed as `pack` packs it, after the same lossy-target check
    (on the multipliers pack computes, from the one loaded checkpoint)."""
    if codec is None:  # hf
        res = hf_export.export(src, out=out, force=force, progress=progress)
        return RepackResult(res.path, "checkpoint", format, res.tensors, res.nbytes)
    ck, max_error, worst = None, 0.0, None
    if not codec.spec.lossless:
        ck = load_checkpoint(src)
        max_error, worst = check_loss(_multipliers(ck, codec), codec, allow_lossy)
    res = gguf_export.export(src, codec, out=out, force=force, progress=progress, ck=ck)
    return RepackResult(res.path, "checkpoint", format, res.tensors, res.nbytes,
                        max_error, worst, res.sidecar)


def _multipliers(ck: Checkpoint, codec: Codec) -> Iterator[tuple[str, np.float32]]:
    """(GGUF name, multiplier) of every ternary weight, as pack computes it (pass 1 only)."""
    rule = ternary.scale_rule(dict(ck.config))
    with MappedFiles() as mf:
        for t in plan(ck, detect(ck.config)):
            if t.kind == "ternary":
                yield t.gguf_name, ternary_rows(ck, mf, t, rule,
                                                binary=0 not in codec.spec.codes).multiplier
