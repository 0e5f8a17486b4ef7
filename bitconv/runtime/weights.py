"""Load a model for the runtime, from a packed GGUF file or from a source checkpoint.

Both paths give the same form: GGUF tensor names, ternary tensors as TernaryTensor (codes +
float32 multiplier), dense tensors as float32 arrays. The checkpoint path goes through the very
plan, ternarization and f16 rounding that `pack` uses, so a lossless packed file and its source
load to identical weights.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv import ternary
from bitconv.checkpoint import load_checkpoint
from bitconv.errors import InputError
from bitconv.families import detect
from bitconv.families.base import plan
from bitconv.formats import codec_for, get_format
from bitconv.gguf_io import F16, F32, TYPE_NAMES
from bitconv.gguf_reader import read_gguf, tensor_array, tensor_bytes
from bitconv.pack import dense_chunks, metadata, ternary_codes
from bitconv.safetensors_io import MappedFiles
from bitconv.types import TernaryTensor

Tensor = TernaryTensor | npt.NDArray[np.float32]


@dataclass(frozen=True)
class Weights:
    """A model in memory: GGUF-style metadata and tensors by GGUF name."""

    kvs: Mapping[str, Any]
    tensors: Mapping[str, Tensor]
    order: tuple[str, ...]  # tensor names in file order


def load_gguf(path: str | Path) -> Weights:
    """Unpack every tensor of a packed GGUF through the format registry; a weight's companion
    tensors (e.g. a separate scale) are folded into its TernaryTensor."""
    gf = read_gguf(path)
    by_name = {t.name: t for t in gf.tensors}
    tensors: dict[str, Tensor] = {}
    companions: set[str] = set()
    for t in gf.tensors:
        if t.name in companions:
            continue
        if t.ggml_type in (F32, F16):
            tensors[t.name] = np.array(tensor_array(gf, t), dtype=np.float32)
            continue
        codec = codec_for(t.ggml_type, t.name, t.shape, set(by_name))
        if codec is None:
            name = TYPE_NAMES.get(t.ggml_type, str(t.ggml_type))
            raise InputError(f"{path}: tensor {t.name!r} has type {name}, which bitconv cannot run")
        parts = codec.parts(t.name, t.shape)
        companions.update(p.name for p in parts[1:])
        datas = [np.asarray(tensor_bytes(gf, by_name[p.name])) for p in parts]
        try:
            codes, m = codec.decode(datas, t.shape)
        except InputError as e:
            raise InputError(f"{t.name}: {e}") from None
        tensors[t.name] = TernaryTensor(t.name, codes, np.float32(m))
    for name in companions:
        tensors.pop(name, None)  # a companion stored before its weight was loaded as dense
    order = tuple(t.name for t in gf.tensors if t.name not in companions)
    return Weights(dict(gf.kvs), tensors, order)


def load_any(path: str | Path) -> Weights:
    """A GGUF file or a checkpoint directory."""
    return load_checkpoint_weights(path) if Path(path).is_dir() else load_gguf(path)


def load_checkpoint_weights(src: str | Path, scale_rule: ternary.ScaleRule | None = None,
                            format: str = "i2s") -> Weights:
    """What `pack` would write for `src`, unpacked: the reference a packed file must equal."""
    ck = load_checkpoint(src)
    fam = detect(ck.config)
    items = plan(ck, fam)
    rule = scale_rule or ternary.scale_rule(dict(ck.config))
    tensors: dict[str, Tensor] = {}
    with MappedFiles() as mf:
        for t in items:
            if t.kind == "ternary":
                m, chunks = ternary_codes(ck, mf, t, rule, scale_rule is None)
                tensors[t.gguf_name] = TernaryTensor(t.gguf_name, np.concatenate(list(chunks)), m)
            else:
                parts = [np.array(c, dtype=np.float32) for c in dense_chunks(ck, mf, t)]
                tensors[t.gguf_name] = np.concatenate(parts).reshape(t.shape)
    kvs = {kv.key: kv.value for kv in metadata(ck, fam, get_format(format))}
    return Weights(kvs, tensors, tuple(t.gguf_name for t in items))
