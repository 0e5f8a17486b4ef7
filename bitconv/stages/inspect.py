"""Describe a checkpoint directory or a GGUF file: what it is, its metadata, every tensor.

Shapes are shown in each container's own order: [out, in] for safetensors (numpy/torch),
ne0-first for GGUF, as gguf-dump and llama.cpp print them. For a GGUF, each ternary weight and
companion is labelled with the codec that reads it (formats/registry.py `codec_for`), and the
summary says whether that format keeps the float32 multipliers; for a lossy one (an fp16 `d`)
it bounds the weight error from the file alone: the exact multiplier is not stored, but it
rounded to d, so it lies within half an fp16 ulp of it. For TL1/TL2 it names the kernel
configuration the file is read with and each shape's tiling (bitconv/containers/kernel_config.py), and
refuses a TL file that has none.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitconv.containers.gguf_reader import GGUFFile, GGUFTensor, read_gguf, tensor_bytes
from bitconv.containers.gguf_writer import F16, F32, TYPE_NAMES
from bitconv.containers.kernel_config import file_tilings
from bitconv.formats.base import Codec
from bitconv.formats.registry import codec_for, decode
from bitconv.model import ternary
from bitconv.model.checkpoint import load_checkpoint
from bitconv.model.families import detect
from bitconv.model.families.base import Dims
from bitconv.model.tokenizer.from_files import pre_runtimes

MAX_SHOWN_ITEMS = 8  # long metadata arrays (tokens, merges) are summarised


@dataclass(frozen=True)
class TensorRow:
    name: str
    type: str
    shape: tuple[int, ...]
    nbytes: int
    codec: str | None = None  # GGUF: the format of a ternary weight, "<format> companion"


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
        cw = max((len(t.codec or "") for t in self.tensors), default=0)

        def codec(t: TensorRow) -> str:
            return f"  {t.codec or '-':<{cw}}" if cw else ""
        head = f"  {'format':<{cw}}" if cw else ""
        lines += ["", f"{'tensor':<{nw}}  {'type':<6}{head}  {'shape':<18}  {'bytes':>12}"]
        lines += [f"{t.name:<{nw}}  {t.type:<6}{codec(t)}  {list(t.shape)!s:<18}  "
                  f"{t.nbytes:>12,}" for t in self.tensors]
        total = sum(t.nbytes for t in self.tensors)
        lines.append(f"{len(self.tensors)} tensors, {total:,} bytes")
        return "\n".join(lines)


def describe(path: str | Path, kernel_config: str | Path | None = None) -> Description:
    """Describe a Hugging Face checkpoint directory or a GGUF file (a TL file's tiling from
    `kernel_config`, its sidecar or its metadata key: bitconv/containers/kernel_config.py)."""
    path = Path(path)
    if path.is_dir():
        return _describe_checkpoint(path)
    return _describe_gguf(path, kernel_config)


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


def _describe_gguf(path: Path, kernel_config: str | Path | None) -> Description:
    gf = read_gguf(path)
    summary: dict[str, Any] = {"gguf version": gf.version, "alignment": gf.alignment}
    labels, weights = _codecs(gf)
    for fmt, (codec, parts) in weights.items():
        summary["ternary format"] = _format_label(codec, max(map(len, parts)))
        shapes = [(p[0].name, (p[0].shape[0], p[0].shape[1])) for p in parts]
        tilings = file_tilings(path, gf.kvs, fmt, shapes, kernel_config)
        if tilings.by_shape:
            summary["kernel config"] = tilings.source
            summary["tiling"] = tilings.describe()
        if not codec.spec.lossless:
            summary["max weight error"] = _loss_bound(gf, codec, parts)
    if gf.kvs.get("tokenizer.ggml.model") == "gpt2":  # BPE: the pre name decides who loads it
        summary["tokenizer loads in"] = pre_runtimes(str(gf.kvs.get("tokenizer.ggml.pre")))
    for k, v in gf.kvs.items():
        summary[k] = _short(v)
    rows = tuple(TensorRow(t.name, TYPE_NAMES.get(t.ggml_type, str(t.ggml_type)),
                           tuple(reversed(t.shape)), t.nbytes, labels.get(t.name))
                 for t in gf.tensors)
    return Description(str(path), "gguf", summary, rows)


Parts = list[tuple[GGUFTensor, ...]]


def _codecs(gf: GGUFFile) -> tuple[dict[str, str], dict[str, tuple[Codec, Parts]]]:
    """Each ternary weight and companion -> its label; format -> (codec, every weight's parts)."""
    by_name = {t.name: t for t in gf.tensors}
    labels: dict[str, str] = {}
    weights: dict[str, tuple[Codec, Parts]] = {}
    for t in gf.tensors:
        if t.ggml_type in (F32, F16) or len(t.shape) != 2:
            continue
        codec = codec_for(t.ggml_type, t.name, (t.shape[0], t.shape[1]), set(by_name), gf.kvs)
        if codec is None:
            continue
        fmt, parts = codec.spec.name, codec.parts(t.name, t.shape)
        weights.setdefault(fmt, (codec, []))[1].append(tuple(by_name[p.name] for p in parts))
        labels[t.name] = fmt
        labels.update((p.name, f"{fmt} companion") for p in parts[1:])
    return labels, weights


def _format_label(codec: Codec, n_parts: int) -> str:
    if not codec.spec.lossless:
        return f"{codec.spec.name} (lossy: each multiplier rounded to an fp16 d)"
    where = "in F32 companion tensors" if n_parts > 1 else "in the tensor data"
    return f"{codec.spec.name} (lossless: float32 multipliers {where})"


def _loss_bound(gf: GGUFFile, codec: Codec, weights: Parts) -> str:
    """The largest relative weight error a lossy file can hold: its multipliers m are not
    stored, but each rounded to d = fp16(m), so |d - m| is at most half an fp16 ulp of d."""
    worst, where = 0.0, ""
    for parts in weights:
        _, m = decode(codec, [np.asarray(tensor_bytes(gf, p)) for p in parts], parts[0].shape)
        d = np.float16(m)
        a = abs(float(d))
        if a == 0:
            continue
        below = (a - abs(float(np.nextafter(d, np.float16(0))))) / 2  # half ulps either side
        above = (abs(float(np.nextafter(d, np.copysign(np.float16(np.inf), d)))) - a) / 2
        bound = max(below / (a - below), above / (a + above))
        if bound > worst:
            worst, where = bound, parts[0].name
    return (f"<= {worst:.3g} relative, in {where} (fp16 rounding of the multiplier; the exact "
            "float32 ones are not in the file)")


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
