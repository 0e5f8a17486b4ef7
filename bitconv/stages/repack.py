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
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGUFValueType as T
from tqdm import tqdm

from bitconv.containers.atomic import atomic_output, check_writable, default_output
from bitconv.containers.gguf_reader import (
    GGUFFile,
    GGUFTensor,
    kv_records,
    read_gguf,
    tensor_bytes,
)
from bitconv.containers.gguf_writer import (
    BF16,
    F16,
    F32,
    I8,
    TYPE_NAMES,
    GGUFWriter,
    TensorInfo,
    write_parts,
)
from bitconv.containers.kernel_config import NONE, FileTilings, file_tilings
from bitconv.errors import InputError, OutputError, PackError
from bitconv.formats import HF
from bitconv.formats.base import Codec
from bitconv.formats.registry import codec_for, decode, get_codec
from bitconv.formats.tl_common import KV_KEY
from bitconv.model.tensors import row_chunks
from bitconv.types import KV

PLAIN = (F32, F16, BF16, I8)  # copied as they are
BYTE_CHUNK = 1 << 24


@dataclass(frozen=True)
class RepackResult:
    path: Path
    source_format: str  # the codec of the input's ternary weights, or "checkpoint"
    format: str
    tensors: int  # tensors written
    nbytes: int  # tensor bytes written
    max_error: float = 0.0  # largest relative change of a multiplier (lossy targets only)
    worst: str | None = None  # the tensor with that change
    sidecar: Path | None = None  # the format's extra file (TL kernel configuration)
    changed: tuple[str, ...] = ()  # GGUF keys that packing an `hf` output would not give back


@dataclass(frozen=True)
class Source:
    """A packed GGUF as repack reads it: tensors in file order, a weight's companions folded in."""

    gf: GGUFFile
    format: str  # the codec of its ternary weights ("" when it has none)
    tensors: tuple[GGUFTensor, ...]
    codecs: Mapping[str, Codec]  # ternary weight name -> the codec that wrote it
    parts: Mapping[str, tuple[GGUFTensor, ...]]  # ternary weight name -> its stored parts
    tilings: FileTilings = NONE  # a TL file's tiling per shape (bitconv/containers/kernel_config.py)

    def weights(self) -> list[tuple[str, tuple[int, int]]]:
        """(name, shape) of every ternary weight, in file order."""
        return [(t.name, (t.shape[0], t.shape[1])) for t in self.tensors if t.name in self.codecs]

    def decode(self, t: GGUFTensor) -> tuple[npt.NDArray[np.int8], np.float32]:
        datas = [np.asarray(tensor_bytes(self.gf, p)) for p in self.parts[t.name]]
        try:
            codes, m = decode(self.codecs[t.name], datas, t.shape, self.tilings.by_shape)
        except InputError as e:
            raise InputError(f"{self.gf.path}: {t.name}: {e}") from None
        return codes, np.float32(m)

    def multipliers(self) -> Iterator[tuple[str, np.float32]]:
        for t in self.tensors:
            if t.name in self.codecs:
                yield t.name, self.decode(t)[1]


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
    source = read_source(src, kernel_config)
    out = Path(out) if out is not None else default_output(output_stem(source), format)
    if os.path.realpath(out) == os.path.realpath(src):  # Path.resolve raises on a loop
        raise OutputError(f"{out}: is the input; choose another output")
    if codec is None:
        from bitconv.stages.repack_hf import export_hf
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


def read_source(path: Path, kernel_config: str | Path | None = None) -> Source:
    """Parse a packed GGUF and find the codec of each ternary weight (InputError if none fits)
    and, for TL1/TL2, the file's tiling (InputError if it has none: file_tilings)."""
    gf = read_gguf(path)
    if "general.architecture" not in gf.kvs:
        raise InputError(f"{path}: no general.architecture in the metadata")
    by_name = {t.name: t for t in gf.tensors}
    codecs: dict[str, Codec] = {}
    parts: dict[str, tuple[GGUFTensor, ...]] = {}
    for t in gf.tensors:
        if t.ggml_type in PLAIN:
            continue
        kind = TYPE_NAMES.get(t.ggml_type, str(t.ggml_type))
        if len(t.shape) != 2:
            raise InputError(f"{path}: tensor {t.name!r} is {kind} of shape {list(t.shape)}; "
                             "bitconv reads 2-D ternary weights")
        codec = codec_for(t.ggml_type, t.name, (t.shape[0], t.shape[1]), set(by_name), gf.kvs)
        if codec is None:
            raise InputError(f"{path}: tensor {t.name!r} has type {kind}, which bitconv "
                             "cannot repack")
        codecs[t.name] = codec
        parts[t.name] = tuple(by_name[p.name] for p in codec.parts(t.name, t.shape))
    companions = {p.name for ps in parts.values() for p in ps[1:]}
    names = sorted({c.spec.name for c in codecs.values()})
    if len(names) > 1:
        raise InputError(f"{path}: ternary tensors in several formats ({', '.join(names)})")
    source = Source(gf, names[0] if names else "",
                    tuple(t for t in gf.tensors if t.name not in companions), codecs, parts)
    return replace(source, tilings=file_tilings(path, gf.kvs, source.format, source.weights(),
                                                kernel_config))


def output_stem(source: Source) -> str:
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
    from bitconv.runtime.weights import stored

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


def target_kvs(source: Source, codec: Codec) -> list[KV]:
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


def _write(source: Source, codec: Codec, out: Path, force: bool, progress: bool) -> int:
    groups = [[TensorInfo(p.name, p.shape, p.ggml_type, p.nbytes)
               for p in codec.parts(t.name, t.shape)] if t.name in source.codecs
              else [TensorInfo(t.name, t.shape, t.ggml_type, t.nbytes)] for t in source.tensors]
    flat = [i for g in groups for i in g]
    total = sum(i.nbytes for i in flat)
    with atomic_output(out, force) as f, \
            tqdm(total=total, unit="B", unit_scale=True, desc=f"repack {codec.spec.name}",
                 file=sys.stderr, disable=not progress, leave=False) as bar:
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
    for rs in row_chunks(*codes.shape, multiple):
        yield codes[rs]


def byte_chunks(data: npt.NDArray[np.uint8]) -> Iterator[npt.NDArray[np.uint8]]:
    for a in range(0, data.size, BYTE_CHUNK):
        yield data[a:a + BYTE_CHUNK]


def _pack_dir(src: Path, format: str, codec: Codec | None, out: str | Path | None, force: bool,
              allow_lossy: bool, progress: bool) -> RepackResult:
    """A checkpoint directory: `pack` it, after the same lossy-target check."""
    from bitconv.model.checkpoint import load_checkpoint
    from bitconv.model.families import detect
    from bitconv.model.families.base import plan
    from bitconv.runtime.weights import load_checkpoint_weights
    from bitconv.stages.pack import pack
    from bitconv.types import TernaryTensor

    if codec is not None and not codec.spec.lossless:
        w = load_checkpoint_weights(src)
        tensors = ((n, w.tensors[n]) for n in w.order)
        pairs = ((n, t.multiplier) for n, t in tensors if isinstance(t, TernaryTensor))
        max_error, worst = check_loss(pairs, codec, allow_lossy)
    else:
        max_error, worst = 0.0, None
    res = pack(src, format=format, out=out, force=force, progress=progress)
    ck = load_checkpoint(src)
    items = [t for t in plan(ck, detect(ck.config)) if t.kind == "ternary"]
    extra = codec.sidecar([(t.gguf_name, t.shape) for t in items]) if codec else None
    side = res.path.with_name(res.path.name + extra[0]) if extra else None
    return RepackResult(res.path, "checkpoint", format, res.tensors, res.nbytes,
                        max_error, worst, side)
