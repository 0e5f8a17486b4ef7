"""Stage `verify`: audit a packed file, whoever wrote it, against its source checkpoint.

Every check runs and every finding is reported with its class (DESIGN.md §5):
(1) container: the file parses and every tensor unpacks; (2) metadata: each key against what
the source gives, classed by bitconv/stages/audit.py; (3) tensors: each one against what the source
ternarizes to (codes and multiplier) or converts to (dense tensors), bit for bit, computed by the
textbook definitions (model/reference.py), not by pack's fast paths, so a file from a broken
pack fails here like a file from anyone else's converter; (4) logits:
the runtime's logits for a fixed token sequence from the file and from the source; (5) drift
against the source's latent float weights, where it has them (information).

Classes: `ok`; `info` (differs, provably computes the same, or describes only); `info loss`
(a lossy variant within its rounding bound); `FAIL` (changes what a runtime computes). Tensor
rules: a multiplier one float32 ulp from the source's is `info` (converters round the absmean
differently: bitnet.cpp 1.0 stores fl(1/fl(1/mean))); in a lossy `-fp16` file each multiplier
may be off by its fp16 rounding, half an fp16 ulp, plus one float32 ulp for that converter
rounding before it (`info loss`); a multiplier that is the reciprocal, the square, the
reciprocal of the square of the source's or 1.0 (the bugs of shared/reference/bitnet-cpp.md
§3.5) is `FAIL` and named so, with the ratio. Logits are compared against the source packed in
the file's format; they must be bit-identical when the tensors are. Where tensors differ only by
`info`/`info loss` rounding, logits may differ slightly: that is reported as `info` with the
size of the difference; any other logit difference is `FAIL`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bitconv.containers.kernel_config import KernelConfigError
from bitconv.errors import InputError
from bitconv.formats.hf import ScaleRule
from bitconv.formats.registry import get_codec
from bitconv.runtime.memory import choose
from bitconv.runtime.model import Model
from bitconv.runtime.weights import (
    LazyTensors,
    Tensor,
    Weights,
    has_latent,
    load_any,
    load_checkpoint_weights,
    stored,
)
from bitconv.stages.audit import FAIL, INFO, LOSS, OK, Finding, audit_metadata
from bitconv.types import TernaryTensor

__all__ = ["Finding", "Report", "fixed_tokens", "verify"]


@dataclass(frozen=True)
class Report:
    path: str
    source: str | None
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return all(f.cls != FAIL for f in self.findings)

    @property
    def first_failure(self) -> str:
        f = next(f for f in self.findings if f.cls == FAIL)
        return f"{self.path}: {f.check}: {f.message}"

    def to_text(self) -> str:
        return "\n".join(f"{f.cls:<4}  {f.check:<10} {f.message}" for f in self.findings)

    def to_json(self) -> str:
        return json.dumps({"path": self.path, "source": self.source, "ok": self.ok,
                           "findings": [f.to_dict() for f in self.findings]}, indent=2,
                          default=float)


def fixed_tokens(n: int, vocab: int) -> np.ndarray:
    """A deterministic token sequence spread over the vocabulary (no tokenizer needed)."""
    return (np.arange(n, dtype=np.int64) * 7919 + 13) % vocab


def verify(packed: str | Path, *, source: str | Path | None = None, tokens: int = 16,
           scale_rule: ScaleRule | None = None, mode: str = "exact",
           drift: bool = True, kernel_config: str | Path | None = None,
           memory: int | None = None) -> Report:
    """Audit `packed` (a GGUF file, or an `hf` export directory) against `source`; without a
    source only the container and codecs are checked. A TL file is read with its tiling from
    `kernel_config`, its sidecar or its metadata key (bitconv/containers/kernel_config.py); without one
    it cannot be judged: KernelConfigError (exit 1), not a finding.

    Memory stays near the largest tensor: weights are lazy and the models stream their codes;
    if even that does not fit in `memory` bytes (default: what is available), MemoryLimitError
    before anything is loaded (runtime/memory.py).
    `mode` selects the BitLinear numerics of the logits check (runtime/bitlinear.py). `drift`
    adds, where the source has unquantized latent weights, how far the ternary model's logits
    are from the float model's (information, never a failure). A file that does not parse gets
    one `FAIL container` finding: nothing else can be read from it.

    Example:
        >>> verify("m-i2s.gguf", source="bitnet-b1.58-2B-4T").ok
        True
    """
    try:
        got = load_any(packed, kernel_config)
    except KernelConfigError:
        raise
    except InputError as e:
        return Report(str(packed), _s(source), (Finding(FAIL, "container", str(e)),))
    exact = lossless(got.format)
    if source is None:
        return Report(str(packed), None, tuple(_tensors(got, None)[0]))
    ref = load_checkpoint_weights(source, scale_rule, format=exact)
    choose(ref, tokens, memory, representations=("stream",), name=str(packed))
    kvs = dict(ref.kvs if exact == got.format else  # a lossy format's own metadata
               load_checkpoint_weights(source, scale_rule, format=got.format).kvs)
    if Path(packed).is_dir():  # an `hf` export: its name is its directory's
        got = replace(got, kvs={**got.kvs, "general.name": kvs.get("general.name")})
    container, tensors = _tensors(got, ref)
    found = [*container, *audit_metadata(got.kvs, kvs), *tensors]
    found.append(_logits(got, as_stored(ref, got.format), tokens, mode, found))
    if drift:  # the source's own ternary vs latent logits: independent of the file
        found.append(_drift(source, ref, tokens))
    return Report(str(packed), _s(source), tuple(found))


def lossless(fmt: str) -> str:
    """The lossless twin of a format (`tq2_0-fp16` -> `tq2_0`): the source's exact multipliers."""
    twin = fmt.removesuffix("-fp16")
    return twin if get_codec(twin).spec.lossless else fmt


def as_stored(ref: Weights, fmt: str) -> Weights:
    """`ref` with each multiplier as a file in `fmt` stores it (fp16-rounded for `-fp16`)."""
    codec = get_codec(fmt)
    if codec.spec.lossless:
        return replace(ref, format=fmt)

    def loader(name: str) -> Callable[[], Tensor]:
        def load() -> Tensor:
            t = ref.tensors[name]
            if isinstance(t, TernaryTensor):
                return replace(t, multiplier=stored(codec, t.multiplier))
            return t
        return load
    return Weights(ref.kvs, LazyTensors({n: loader(n) for n in ref.order}), ref.order, fmt,
                   ref.layout)


def _s(p: str | Path | None) -> str | None:
    return None if p is None else str(p)


def _tensors(got: Weights, ref: Weights | None) -> tuple[list[Finding], list[Finding]]:
    """Decode every tensor of `got` once (the container check); with `ref`, compare each with
    the source's, built meanwhile on a second thread. Returns (container, tensors) findings."""
    broken, diffs, n_t = [], [], 0
    theirs = set() if ref is None else set(ref.order)
    with ThreadPoolExecutor(1) as pool:
        for name in got.order:
            b = pool.submit(ref.tensors.__getitem__, name) if ref and name in theirs else None
            try:
                a = got.tensors[name]
            except InputError as e:
                broken.append(Finding(FAIL, "container", str(e), name))
                continue
            n_t += isinstance(a, TernaryTensor)
            if b is not None:
                diffs += _compare(name, a, b.result(), got.format)
    container = broken or [Finding(OK, "container", f"{len(got.order)} tensors parse and "
                                                    f"unpack ({n_t} ternary)")]
    if ref is None:
        return container, []
    mine = set(got.order)
    diffs += [Finding(FAIL, "tensors", f"{n}: missing (the source has it)", n)
              for n in ref.order if n not in mine]
    diffs += [Finding(FAIL, "tensors", f"{n}: not in the source", n)
              for n in got.order if n not in theirs]
    common = [n for n in got.order if n in theirs]
    if common != [n for n in ref.order if n in mine]:
        i = next(i for i, (x, y) in enumerate(zip(common, [n for n in ref.order if n in mine]))
                 if x != y)
        diffs.append(Finding(INFO, "tensors", f"tensor order differs from the source's (tensor "
                                              f"#{i} is {common[i]!r}); readers find tensors by "
                                              "name"))
    same = len(ref.order) - len({f.subject for f in diffs if f.subject})
    head = (f"all {len(ref.order)} tensors equal the source's, bit for bit"
            if same == len(ref.order) else
            f"{same} of {len(ref.order)} tensors equal the source's, bit for bit")
    return container, [Finding(OK, "tensors", head, numbers={"equal": same,
                                                             "tensors": len(ref.order)}),
                       *_rounding(diffs, got.format)]


def _rounding(diffs: list[Finding], fmt: str) -> list[Finding]:
    """The per-tensor `info` (one ulp) and `info loss` (fp16) multiplier findings, each kind
    folded into one finding that names every tensor; the others as they are."""
    ulp = [f for f in diffs if f.cls == INFO and f.subject]
    loss = [f for f in diffs if f.cls == LOSS]
    out = [f for f in diffs if f not in ulp and f not in loss]
    if ulp:
        out.append(Finding(INFO, "tensors", f"{len(ulp)} multipliers one float32 ulp from the "
                                            f"source's, first {ulp[0].subject} (converters round "
                                            "the absmean differently)", ulp[0].subject,
                           {"tensors": [f.subject for f in ulp]}))
    if loss:
        w = max(loss, key=lambda f: float(f.numbers["rel"]))
        out.append(Finding(LOSS, "loss", f"{fmt} is lossy (fp16 block scale): max weight error "
                                         f"{w.numbers['rel']:.3g} relative, in {w.subject}; all "
                                         f"{len(loss)} multipliers within its rounding bound",
                           w.subject, {"max_rel": w.numbers["rel"],
                                       "tensors": [f.subject for f in loss]}))
    return out


def _compare(name: str, a: Any, b: Any, fmt: str) -> list[Finding]:
    if isinstance(a, TernaryTensor) != isinstance(b, TernaryTensor):
        return [Finding(FAIL, "tensors", f"{name}: ternary in one, dense in the other", name)]
    found = []
    if isinstance(a, TernaryTensor) and isinstance(b, TernaryTensor):
        m = _multiplier(name, np.float32(a.multiplier), np.float32(b.multiplier), fmt)
        found += [] if m is None else [m]
        a, b = a.codes, b.codes
    if a.shape != b.shape:
        return [Finding(FAIL, "tensors", f"{name}: shape {list(a.shape)}, the source gives "
                                         f"{list(b.shape)}", name)]
    if not _equal(a, b):
        diff = np.asarray(a) != np.asarray(b)
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        n = int(diff.sum())
        found.insert(0, Finding(FAIL, "tensors", f"{name}: {n} values differ, first at "
                                                 f"{list(idx)} ({a[idx]} vs {b[idx]} in the "
                                                 "source)", name, {"count": n, "first": list(idx)}))
    return found


# A multiplier that is one of these functions of the source's: a known converter bug.
CONVENTIONS = (("the reciprocal of", lambda s: 1 / s), ("the square of", lambda s: s * s),
               ("the reciprocal of the square of", lambda s: 1 / (s * s)),
               ("1.0 instead of", lambda s: 1.0))


def _multiplier(name: str, m: np.float32, s: np.float32, fmt: str) -> Finding | None:
    if m.view(np.uint32) == s.view(np.uint32):
        return None
    ulp = float(np.spacing(abs(s)))
    nums = {"multiplier": float(m), "source": float(s), "ratio": float(m) / float(s),
            "ulps": abs(float(m) - float(s)) / ulp}
    what = f"{name}: multiplier {float(m)!r}, the source's {float(s)!r}"
    if not get_codec(fmt).spec.lossless:
        bound = float(np.spacing(abs(np.float16(s)))) / 2 + ulp
        if abs(float(m) - float(s)) <= bound:
            return Finding(LOSS, "tensors", f"{what}: {fmt} rounds it to fp16", name,
                           {**nums, "bound": bound, "rel": abs(float(m) / float(s) - 1)})
    elif abs(float(m) - float(s)) <= ulp:
        return Finding(INFO, "tensors", f"{what}: one float32 ulp apart (converters round the "
                                        "absmean differently)", name, nums)
    for words, f in CONVENTIONS:
        if np.isclose(float(m), f(float(s)), rtol=2e-3, atol=0):
            return Finding(FAIL, "tensors", f"{name}: multiplier {float(m)!r} is {words} the "
                                            f"source's {float(s)!r} (ratio {nums['ratio']:.6g})",
                           name, nums)
    return Finding(FAIL, "tensors", f"{what} (ratio {nums['ratio']:.6g})", name, nums)


def _equal(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 22) -> bool:
    """a == b everywhere, by row blocks of about `chunk` values (no tensor-sized temporary)."""
    rows = max(1, chunk // max(1, a[:1].size))
    return all(np.array_equal(a[i:i + rows], b[i:i + rows]) for i in range(0, len(a), rows))


def _logits(got: Weights, ref: Weights, n: int, mode: str, found: list[Finding]) -> Finding:
    try:
        model_got = Model(got, mode, codes="stream")
        ids = fixed_tokens(n, model_got.spec.vocab)
        a = model_got.forward(ids)
    except (InputError, ValueError, IndexError, KeyError) as e:
        return Finding(FAIL, "logits", f"the runtime cannot run the file: {e}")
    del model_got  # its float32 embedding (1.3 GB at 2B4T size) before the source's
    b = Model(ref, mode, codes="stream").forward(ids)
    if a.shape == b.shape and np.array_equal(a, b):
        return Finding(OK, "logits", f"{n} positions x {a.shape[1]} logits bit-identical "
                                     f"({mode} mode)")
    if a.shape != b.shape:
        return Finding(FAIL, "logits", f"shape {list(a.shape)}, the source's {list(b.shape)}")
    pos = int(np.argmax((a != b).any(axis=1)))
    rel = float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))
    nums = {"first_position": pos, "max_rel": rel, "positions": n}
    rounding = [f for f in found if f.check in ("tensors", "loss") and f.cls in (INFO, LOSS)
                and f.subject]
    if rounding and not any(f.cls == FAIL for f in found):
        return Finding(INFO, "logits", f"differ from position {pos} on, max |delta| {rel:.3g} of "
                                       f"max |logit| ({mode} mode): the multipliers' rounding "
                                       "above, nothing else",
                       numbers=nums)
    return Finding(FAIL, "logits", f"first difference at position {pos} (max |delta| {rel:.3g} "
                                   f"of max |logit|, {mode} mode)", numbers=nums)


def _drift(source: str | Path, ref: Weights, n: int) -> Finding:
    """Ternary (exact mode) vs unquantized latent weights: max |Δlogit| relative to max |logit|,
    and how often the top-1 token agrees. Information only: ternarization is meant to differ."""
    if not has_latent(source):
        return Finding(INFO, "drift", "no latent weights in the source (it is already ternary)")
    ids = fixed_tokens(n, len(ref.kvs["tokenizer.ggml.tokens"]))
    f = Model(load_checkpoint_weights(source, latent=True), codes="stream").forward(ids)
    t = Model(ref, codes="stream").forward(ids)
    rel = float(np.abs(t - f).max() / max(float(np.abs(f).max()), 1e-30))
    top1 = float((t.argmax(1) == f.argmax(1)).mean())
    return Finding(INFO, "drift", f"vs latent float weights: max |delta| {rel:.3g} of max "
                                  f"|logit|, top-1 agrees at {top1:.0%} of {n} positions",
                   numbers={"max_rel": rel, "top1": top1, "positions": n})
