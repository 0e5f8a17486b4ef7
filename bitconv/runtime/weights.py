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
from bitconv.formats import FORMATS, get_format
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
    """Unpack every tensor of a packed GGUF through the format registry."""
    gf = read_gguf(path)
    by_type = {m.SPEC.ggml_type: m for m in FORMATS.values()}
    tensors: dict[str, Tensor] = {}
    for t in gf.tensors:
        if t.ggml_type in (F32, F16):
            tensors[t.name] = np.array(tensor_array(gf, t), dtype=np.float32)
        elif t.ggml_type in by_type:
            try:
                codes, m = by_type[t.ggml_type].unpack(np.asarray(tensor_bytes(gf, t)), t.shape)
            except InputError as e:
                raise InputError(f"{t.name}: {e}") from None
            tensors[t.name] = TernaryTensor(t.name, codes, np.float32(m))
        else:
            name = TYPE_NAMES.get(t.ggml_type, str(t.ggml_type))
            raise InputError(f"{path}: tensor {t.name!r} has type {name}, which bitconv cannot run")
    return Weights(dict(gf.kvs), tensors, tuple(t.name for t in gf.tensors))


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
