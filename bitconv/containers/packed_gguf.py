"""A packed GGUF as bitconv reads it: each ternary weight with the codec that wrote it and its
stored parts (a weight's companions, e.g. a separate `.scale`, folded into it), the file's TL
tiling, and every other tensor as it is. The one reader of packed tensors: the runtime (`run`,
`verify`, ...) and `repack` both read through it.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitconv.containers.gguf_reader import GGUFFile, GGUFTensor, tensor_bytes
from bitconv.containers.gguf_writer import BF16, F16, F32, I8, TYPE_NAMES
from bitconv.containers.kernel_config import FileTilings, file_tilings
from bitconv.errors import InputError
from bitconv.formats.base import Codec
from bitconv.formats.registry import codec_for, decode

PLAIN = (F32, F16, BF16, I8)  # float and int8 tensors: read (or copied) as they are


@dataclass(frozen=True)
class PackedGGUF:
    """A parsed packed GGUF: tensors in file order without the companions, the codec and the
    stored parts of each ternary weight, the format they share ("" when there are none)."""

    gf: GGUFFile
    format: str
    tensors: tuple[GGUFTensor, ...]
    codecs: Mapping[str, Codec]  # ternary weight name -> the codec that wrote it
    parts: Mapping[str, tuple[GGUFTensor, ...]]  # ternary weight name -> its stored parts
    tilings: FileTilings  # a TL file's tiling per shape (containers/kernel_config.py)
    prefix: str = ""  # what a decode error starts with (repack names the file)

    def weights(self) -> list[tuple[str, tuple[int, int]]]:
        """(name, shape) of every ternary weight, in file order."""
        return _weights(self.tensors, self.codecs)

    def decode(self, t: GGUFTensor) -> tuple[npt.NDArray[np.int8], np.float32]:
        """Codes and float32 multiplier of ternary weight `t`; InputError naming it."""
        datas = [np.asarray(tensor_bytes(self.gf, p)) for p in self.parts[t.name]]
        try:
            codes, m = decode(self.codecs[t.name], datas, t.shape, self.tilings.by_shape)
        except InputError as e:
            raise InputError(f"{self.prefix}{t.name}: {e}") from None
        return codes, np.float32(m)

    def multipliers(self) -> Iterator[tuple[str, np.float32]]:
        for t in self.tensors:
            if t.name in self.codecs:
                yield t.name, self.decode(t)[1]


def read_packed(gf: GGUFFile, kernel_config: str | Path | None = None, *,
                plain: tuple[int, ...] = PLAIN, verb: str = "repack",
                prefix: str = "") -> PackedGGUF:
    """Find the codec of each ternary weight of `gf` (tensors of a `plain` type are left as
    they are; any other type no codec claims: InputError saying bitconv cannot `verb` it) and,
    for TL1/TL2, the file's tiling (InputError if it has none: file_tilings)."""
    path = gf.path
    by_name = {t.name: t for t in gf.tensors}
    codecs: dict[str, Codec] = {}
    parts: dict[str, tuple[GGUFTensor, ...]] = {}
    for t in gf.tensors:
        if t.ggml_type in plain:
            continue
        kind = TYPE_NAMES.get(t.ggml_type, str(t.ggml_type))
        if len(t.shape) != 2:
            raise InputError(f"{path}: tensor {t.name!r} is {kind} of shape {list(t.shape)}; "
                             "bitconv reads 2-D ternary weights")
        codec = codec_for(t.ggml_type, t.name, (t.shape[0], t.shape[1]), set(by_name), gf.kvs)
        if codec is None:
            raise InputError(f"{path}: tensor {t.name!r} has type {kind}, which bitconv "
                             f"cannot {verb}")
        codecs[t.name] = codec
        parts[t.name] = tuple(by_name[p.name] for p in codec.parts(t.name, t.shape))
    companions = {p.name for ps in parts.values() for p in ps[1:]}
    names = sorted({c.spec.name for c in codecs.values()})
    if len(names) > 1:
        raise InputError(f"{path}: ternary tensors in several formats ({', '.join(names)})")
    fmt = names[0] if names else ""
    tensors = tuple(t for t in gf.tensors if t.name not in companions)
    return PackedGGUF(gf, fmt, tensors, codecs, parts,
                      file_tilings(path, gf.kvs, fmt, _weights(tensors, codecs), kernel_config),
                      prefix)


def _weights(tensors: tuple[GGUFTensor, ...],
             codecs: Mapping[str, Codec]) -> list[tuple[str, tuple[int, int]]]:
    return [(t.name, (t.shape[0], t.shape[1])) for t in tensors if t.name in codecs]
