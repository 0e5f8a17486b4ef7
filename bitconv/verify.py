"""Stage `verify`: prove a packed file computes what its source checkpoint computes.

Checks, in order (DESIGN.md §5): (1) the container parses and every tensor unpacks;
(2) its metadata equals what the source gives; (3) every tensor equals, bit for bit, what the
source ternarizes to (codes and multiplier) or converts to (dense tensors); (4) the runtime's
logits for a fixed token sequence are bit-identical from the file and from the source (exact
mode). The first failing check names the offending key, tensor, element or position.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bitconv import ternary
from bitconv.errors import InputError
from bitconv.formats import get_format
from bitconv.runtime.model import Model
from bitconv.runtime.weights import Weights, has_latent, load_any, load_checkpoint_weights
from bitconv.types import TernaryTensor


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    info: bool = False  # reported, never a failure


@dataclass(frozen=True)
class Report:
    path: str
    source: str | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def first_failure(self) -> str:
        c = next(c for c in self.checks if not c.ok)
        return f"{self.path}: {c.name}: {c.detail}"

    def to_text(self) -> str:
        return "\n".join(f"{'info' if c.info else 'ok  ' if c.ok else 'FAIL'}  {c.name:<10} {c.detail}" for c in self.checks)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)


def fixed_tokens(n: int, vocab: int) -> np.ndarray:
    """A deterministic token sequence spread over the vocabulary (no tokenizer needed)."""
    return (np.arange(n, dtype=np.int64) * 7919 + 13) % vocab


def verify(packed: str | Path, *, source: str | Path | None = None, tokens: int = 16,
           scale_rule: ternary.ScaleRule | None = None, mode: str = "exact",
           drift: bool = True) -> Report:
    """Check `packed` (a GGUF file, or an `hf` export directory) against `source`; without a
    source only the container and codecs are checked.

    Memory stays near the largest tensor: weights are lazy and both models run with keep=False.
    `mode` selects the BitLinear numerics of the logits check (runtime/bitlinear.py); file and
    source must agree bit for bit in any mode. `drift` adds, where the source has unquantized
    latent weights, how far the ternary model's logits are from the float model's (information,
    never a failure).

    Example:
        >>> verify("m-i2s.gguf", source="bitnet-b1.58-2B-4T").ok
        True
    """
    try:
        got = load_any(packed)
    except InputError as e:
        return Report(str(packed), _s(source), (Check("container", False, str(e)),))
    ref = None if source is None else load_checkpoint_weights(source, scale_rule, format=got.format)
    if ref is not None and Path(packed).is_dir():  # an `hf` export: its name is its directory's
        got = replace(got, kvs={**got.kvs, "general.name": ref.kvs.get("general.name")})
    meta = None if ref is None else _metadata(got, ref)
    broken, n_t, problem = _unpack(got, ref if meta is None else None)
    if broken:
        return Report(str(packed), _s(source), (Check("container", False, broken),))
    checks = [Check("container", True, f"{len(got.order)} tensors parse and unpack "
                                       f"({n_t} ternary)")]
    if source is None or ref is None:
        return Report(str(packed), None, tuple(checks))
    for name, found in (("metadata", meta), ("tensors", problem)):
        checks.append(Check(name, found is None, found or _ok_detail(name, ref)))
        if found:
            return Report(str(packed), _s(source), tuple(checks))
    if not get_format(got.format).SPEC.lossless:
        checks.append(_loss(source, scale_rule, got.format))
    checks.append(_logits(got, ref, tokens, mode))
    if drift and checks[-1].ok:
        checks.append(_drift(source, ref, tokens))
    return Report(str(packed), _s(source), tuple(checks))


def _s(p: str | Path | None) -> str | None:
    return None if p is None else str(p)


def _ok_detail(name: str, ref: Weights) -> str:
    if name == "metadata":
        return f"{len(ref.kvs)} keys equal the source's"
    return f"all {len(ref.order)} tensors equal the source's, bit for bit"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return np.float32(a) == np.float32(b)  # GGUF floats are float32
    return bool(a == b)


def _metadata(got: Weights, ref: Weights) -> str | None:
    for key, want in ref.kvs.items():
        if key not in got.kvs:
            return f"key {key!r} is missing"
        if not _same(got.kvs[key], want):
            return f"{key} is {_short(got.kvs[key])}, the source gives {_short(want)}"
    extra = sorted(set(got.kvs) - set(ref.kvs))
    return f"unexpected key {extra[0]!r}" if extra else None


def _short(v: Any) -> str:
    return f"a list of {len(v)}" if isinstance(v, (list, np.ndarray)) else repr(v)


def _unpack(got: Weights, ref: Weights | None) -> tuple[str | None, int, str | None]:
    """Decode every tensor of `got` once (the container check), counting the ternary ones; with
    `ref`, compare each with the source's, built meanwhile on a second thread, until the first
    difference. Returns (why the container is broken, ternary count, the first difference)."""
    problem = None if ref is None else _order(got, ref)
    n_t = 0
    with ThreadPoolExecutor(1) as pool:
        for name in got.order:
            b = (pool.submit(ref.tensors.__getitem__, name)
                 if ref is not None and problem is None else None)
            try:
                a = got.tensors[name]
            except InputError as e:
                return str(e), n_t, None
            n_t += isinstance(a, TernaryTensor)
            if b is not None:
                problem = _compare(name, a, b.result())
    return None, n_t, problem


def _order(got: Weights, ref: Weights) -> str | None:
    if got.order == ref.order:
        return None
    i = next((i for i, (a, b) in enumerate(zip(got.order, ref.order)) if a != b),
             min(len(got.order), len(ref.order)))
    return f"tensor #{i} is {_at(got.order, i)}, the source gives {_at(ref.order, i)}"


def _compare(name: str, a: Any, b: Any) -> str | None:
    if isinstance(a, TernaryTensor) != isinstance(b, TernaryTensor):
        return f"{name}: ternary in one, dense in the other"
    if isinstance(a, TernaryTensor) and isinstance(b, TernaryTensor):
        if a.multiplier != b.multiplier:
            return f"{name}: multiplier {a.multiplier!r}, the source gives {b.multiplier!r}"
        a, b = a.codes, b.codes
    if a.shape != b.shape:
        return f"{name}: shape {list(a.shape)}, the source gives {list(b.shape)}"
    if _equal(a, b):
        return None
    diff = np.asarray(a) != np.asarray(b)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
    return (f"{name}: {int(diff.sum())} values differ, first at {list(idx)} "
            f"({a[idx]} vs {b[idx]} in the source)")


def _equal(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 22) -> bool:
    """a == b everywhere, by row blocks of about `chunk` values (no tensor-sized temporary)."""
    rows = max(1, chunk // max(1, a[:1].size))
    return all(np.array_equal(a[i:i + rows], b[i:i + rows]) for i in range(0, len(a), rows))


def _at(order: tuple[str, ...], i: int) -> str:
    return repr(order[i]) if i < len(order) else "absent"


def _logits(got: Weights, ref: Weights, n: int, mode: str) -> Check:
    try:
        model_got = Model(got, mode, keep=False)
    except InputError as e:
        return Check("logits", False, str(e))
    ids = fixed_tokens(n, model_got.spec.vocab)
    a = model_got.forward(ids)
    del model_got  # its float32 embedding (1.3 GB at 2B4T size) before the source's
    b = Model(ref, mode, keep=False).forward(ids)
    if np.array_equal(a, b):
        return Check("logits", True, f"{n} positions x {a.shape[1]} logits bit-identical ({mode} mode)")
    pos = int(np.argmax((a != b).any(axis=1)))
    return Check("logits", False, f"first difference at position {pos} "
                                  f"(max |delta| {float(np.abs(a - b).max()):.3g})")


def _loss(source: str | Path, scale_rule: ternary.ScaleRule | None, fmt: str) -> Check:
    """What a lossy format costs: the largest weight error its stored multipliers make,
    against the multipliers a lossless file holds (information; the file itself was compared
    with what this format must hold, bit for bit)."""
    exact = load_checkpoint_weights(source, scale_rule)
    lossy = load_checkpoint_weights(source, scale_rule, format=fmt)
    worst, where = 0.0, ""
    for name in exact.order:
        a = exact.tensors[name]
        if isinstance(a, TernaryTensor):
            b = lossy.tensors[name]
            assert isinstance(b, TernaryTensor)
            rel = abs(float(b.multiplier) - float(a.multiplier)) / max(abs(float(a.multiplier)), 1e-30)
            if rel > worst or not where:
                worst, where = rel, name
    return Check("loss", True, f"{fmt} is lossy (fp16 block scale): max weight error "
                               f"{worst:.3g} relative, in {where}", info=True)


def _drift(source: str | Path, ref: Weights, n: int) -> Check:
    """Ternary (exact mode) vs unquantized latent weights: max |Δlogit| relative to max |logit|,
    and how often the top-1 token agrees. Information only: ternarization is meant to differ."""
    if not has_latent(source):
        return Check("drift", True, "no latent weights in the source (it is already ternary)",
                     info=True)
    ids = fixed_tokens(n, int(len(ref.kvs["tokenizer.ggml.tokens"])))
    f = Model(load_checkpoint_weights(source, latent=True), keep=False).forward(ids)
    t = Model(ref, keep=False).forward(ids)
    rel = float(np.abs(t - f).max() / max(float(np.abs(f).max()), 1e-30))
    top1 = float((t.argmax(1) == f.argmax(1)).mean())
    return Check("drift", True, f"vs latent float weights: max |delta| {rel:.3g} of max |logit|, "
                                f"top-1 agrees at {top1:.0%} of {n} positions", info=True)
