"""Describe a checkpoint directory or a GGUF file: what it is, its metadata, every tensor.

Shapes are shown in each container's own order: [out, in] for safetensors (numpy/torch),
ne0-first for GGUF, as gguf-dump and llama.cpp print them.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitconv import ternary
from bitconv.checkpoint import load_checkpoint
from bitconv.errors import InputError
from bitconv.families import detect
from bitconv.families.base import Dims
from bitconv.gguf_io import TYPE_NAMES
from bitconv.gguf_reader import read_gguf

MAX_SHOWN_ITEMS = 8  # long metadata arrays (tokens, merges) are summarised


@dataclass(frozen=True)
class TensorRow:
    name: str
    type: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Description:
    path: str
    kind: str  # "checkpoint" | "gguf"
    summary: dict[str, Any]
    tensors: tuple[TensorRow, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def to_text(self) -> str:
        width = max((len(k) for k in self.summary), default=0)
        lines = [f"{k:<{width}}  {v}" for k, v in self.summary.items()]
        nw = max((len(t.name) for t in self.tensors), default=4)
        lines += ["", f"{'tensor':<{nw}}  {'type':<6}  {'shape':<18}  {'bytes':>12}"]
        lines += [f"{t.name:<{nw}}  {t.type:<6}  {str(list(t.shape)):<18}  {t.nbytes:>12,}"
                  for t in self.tensors]
        total = sum(t.nbytes for t in self.tensors)
        lines.append(f"{len(self.tensors)} tensors, {total:,} bytes")
        return "\n".join(lines)


def describe(path: str | Path) -> Description:
    """Describe a Hugging Face checkpoint directory or a GGUF file."""
    path = Path(path)
    if path.is_dir():
        return _describe_checkpoint(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file or directory")
    return _describe_gguf(path)


def _describe_checkpoint(path: Path) -> Description:
    ck = load_checkpoint(path)
    fam = detect(ck.config)
    d = Dims.of(ck.config)
    refs = sorted(ck.tensors.values(), key=lambda r: r.name)
    packed = any(r.dtype == "U8" for r in refs)
    rule = ternary.scale_rule(dict(ck.config))
    summary: dict[str, Any] = {
        "family": f"{fam.name} ({fam.title})",
        "gguf arch": fam.arch,
        "weights": "HF-packed uint8 + weight_scale" if packed else "float (ternarized by absmean)",
        "scale rule": (f"{rule} by weight_scale (linear_class "
                       f"{(ck.config.get('quantization_config') or {}).get('linear_class', 'bitlinear')})"
                       if packed else "absmean: multiplier = max(mean|W|, 1e-5)"),
        "dims": f"hidden {d.hidden}, ffn {d.inter}, layers {d.layers}, heads {d.heads}/"
                f"{d.kv_heads} (head_dim {d.head_dim}), vocab {d.vocab}",
        "files": ", ".join(ck.files),
        "dtypes": ", ".join(f"{k} x{v}" for k, v in sorted(Counter(r.dtype for r in refs).items())),
    }
    rows = tuple(TensorRow(r.name, r.dtype, r.shape, r.nbytes) for r in refs)
    return Description(str(path), "checkpoint", summary, rows)


def _describe_gguf(path: Path) -> Description:
    gf = read_gguf(path)
    summary: dict[str, Any] = {"gguf version": gf.version, "alignment": gf.alignment}
    for k, v in gf.kvs.items():
        summary[k] = _short(v)
    rows = tuple(TensorRow(t.name, TYPE_NAMES.get(t.ggml_type, str(t.ggml_type)),
                           tuple(reversed(t.shape)), t.nbytes) for t in gf.tensors)
    return Description(str(path), "gguf", summary, rows)


def _short(v: Any) -> Any:
    if isinstance(v, (list, np.ndarray)):
        items = list(v[:MAX_SHOWN_ITEMS])
        items = [x.item() if isinstance(x, np.generic) else x for x in items]
        more = f", ... ({len(v)} items)" if len(v) > MAX_SHOWN_ITEMS else ""
        return "[" + ", ".join(repr(x) for x in items) + more + "]"
    if isinstance(v, float):
        return f"{v:.7g}"  # float32 metadata: show the value, not its float64 widening
    if isinstance(v, str) and len(v) > 80:
        return repr(v[:77] + "...")
    return v
