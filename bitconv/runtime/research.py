"""Research inference modes: lower-bit, sparsified or rotated activations and a low-bit KV cache,
applied on top of `exact` mode to measure what each does to a packed model (issue 17 scope 4).

Sites (the input of each BitLinear): `attn_in` (q, k, v), `o_in` (o_proj), `ffn_in` (gate, up),
`down_in` (down_proj). Per site, in this order (every step per token, i.e. per row of x):
  top-K (Q-Sparse, arXiv 2407.10969): keep the ceil(k·d) entries of largest |x|, zero the rest
      (ties broken by position: exactly that many survive);
  Hadamard (BitNet v2, arXiv 2504.18415, H-BitLinear): x <- x·H with H the orthonormal Sylvester
      matrix of size d (d must be a power of two; other sizes are refused, not padded);
  quantizer, b bits, Qp = 2^(b-1) - 1:
      absmax  (BitNet b1.58):  s = Qp / max(max|x|, 1e-5);    q = clip(rint(x·s), -Qp-1, Qp)
      absmean (BitNet a4.8's INT4, b = 4 only): s = sqrt(7) / max(mean|x|, 1e-5);
                                                q = clip(rint(x·s), -8, 7)
  then y = (q / s)[·Hᵀ] @ codesᵀ · multiplier. Without Hadamard this is exact mode's formula
  (q @ codesᵀ) / s · multiplier, evaluated the same way, so b = 8 absmax is exact mode bit for bit.
The trained weights were not trained in the rotated basis, so the rotation is undone after
quantizing (H is orthonormal and symmetric: H·H = I): what remains is the quantization error
measured in the Hadamard basis, which is what the transform is for (spreading outliers).
KV cache bits: K (after RoPE) and V are quantized per head and position with absmax b bits and
kept dequantized. The granularity is this runtime's choice; the papers' kernels may group
differently.

Provenance: the papers' full texts were not readable from this machine (no network; only their
abstracts were found), so the constants above are as recalled from them, not re-derived: the
absmean INT4 scale sqrt(7)/mean|x| and clip [-8, 7] (a4.8), absmax INT4 with Hadamard on the
o_proj/down_proj inputs (v2), magnitude top-K (Q-Sparse). Check them against the papers before
quoting a number as the paper's method.

Presets (what each paper runs at inference; PRESETS):
  a4.8:     attn_in, ffn_in 4-bit absmean; o_in top-K 50 % then 8-bit absmax; down_in 8-bit
            absmax (ReLU² makes it sparse already). The paper adds a 3-bit KV cache: --research
            a4.8,kv=3.
  v2:       every site 4-bit absmax, with Hadamard on o_in and down_in.
  q-sparse: top-K 50 % then 8-bit absmax at every site.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError

F32 = np.float32
Array = npt.NDArray[np.float32]
SITES = ("attn_in", "o_in", "ffn_in", "down_in")
SITE_OF = {"attn_q": "attn_in", "attn_k": "attn_in", "attn_v": "attn_in",
           "attn_output": "o_in", "ffn_gate": "ffn_in", "ffn_up": "ffn_in",
           "ffn_down": "down_in"}


@dataclass(frozen=True)
class SiteQuant:
    bits: int = 8
    stat: str = "absmax"       # "absmax" | "absmean"
    topk: float | None = None  # fraction of entries kept per token
    hadamard: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise InputError(f"activation bits {self.bits}: choose 8, 4, 3 or 2")
        if self.stat not in ("absmax", "absmean") or (self.stat == "absmean" and self.bits != 4):
            raise InputError(f"quantizer {self.stat!r} with {self.bits} bits: absmax takes any "
                             "bits, absmean (BitNet a4.8) only 4")
        if self.topk is not None and not 0 < self.topk <= 1:
            raise InputError(f"top-K ratio {self.topk}: must be in (0, 1]")


@dataclass(frozen=True)
class Research:
    sites: tuple[tuple[str, SiteQuant], ...] = ()
    kv_bits: int | None = None
    name: str = field(default="", compare=False)

    def site(self, site: str) -> SiteQuant | None:
        return dict(self.sites).get(site)

    @property
    def off(self) -> bool:
        return not self.sites and self.kv_bits is None


PRESETS = {
    "a4.8": Research((("attn_in", SiteQuant(4, "absmean")), ("ffn_in", SiteQuant(4, "absmean")),
                      ("o_in", SiteQuant(8, topk=0.5)), ("down_in", SiteQuant(8)))),
    "v2": Research((("attn_in", SiteQuant(4)), ("ffn_in", SiteQuant(4)),
                    ("o_in", SiteQuant(4, hadamard=True)),
                    ("down_in", SiteQuant(4, hadamard=True)))),
    "q-sparse": Research(tuple((s, SiteQuant(8, topk=0.5)) for s in SITES)),
}


def parse(spec: str) -> Research:
    """`PRESET`, `SITE=BITS[:absmean][:topK][:hadamard]` and `kv=BITS`, comma-separated, later
    items overriding earlier ones; SITE `all` sets every site. E.g. `a4.8,kv=3`,
    `all=4`, `o_in=8:top0.5,down_in=4:hadamard`."""
    sites: dict[str, SiteQuant] = {}
    kv: int | None = None
    for item in filter(None, (p.strip() for p in spec.split(","))):
        if item in PRESETS:
            sites.update(PRESETS[item].sites)
            continue
        key, eq, val = item.partition("=")
        if not eq:
            raise InputError(f"research item {item!r}: a preset ({', '.join(PRESETS)}) or "
                             "KEY=VALUE")
        try:
            if key == "kv":
                kv = int(val)
                if kv not in (2, 3, 4, 8):
                    raise InputError(f"kv={val}: choose 8, 4, 3 or 2")
                continue
            parts = val.split(":")
            q = SiteQuant(int(parts[0]))
            for p in parts[1:]:
                if p in ("absmax", "absmean"):
                    q = replace(q, stat=p)
                elif p == "hadamard":
                    q = replace(q, hadamard=True)
                elif p.startswith("top"):
                    q = replace(q, topk=float(p[3:]))
                else:
                    raise InputError(f"research item {item!r}: unknown option {p!r}")
        except ValueError:
            raise InputError(f"research item {item!r}: expected numbers") from None
        for s in (SITES if key == "all" else (key,)):
            if s not in SITES:
                raise InputError(f"research site {key!r}: choose from {', '.join(SITES)}, all")
            sites[s] = q
    return Research(tuple(sorted(sites.items())), kv, spec)


def quantize(x: Array, bits: int, stat: str = "absmax") -> tuple[Array, Array]:
    """Per-row integer codes (as float32) and scales s, x ≈ q / s (module doc)."""
    qp = F32(2 ** (bits - 1) - 1)
    if stat == "absmean":
        s = F32(math.sqrt(7)) / np.maximum(np.abs(x).mean(-1, keepdims=True, dtype=F32),
                                           F32(1e-5))
    else:
        s = qp / np.maximum(np.abs(x).max(-1, keepdims=True), F32(1e-5))
    return np.clip(np.rint(x * s), -qp - 1, qp), s


def topk(x: Array, ratio: float) -> Array:
    """Keep the ceil(ratio·d) largest-|x| entries of each row (stable: earlier position wins)."""
    d = x.shape[-1]
    k = min(d, math.ceil(ratio * d - 1e-9))
    if k == d:
        return x
    order = np.argsort(-np.abs(x), axis=-1, kind="stable")[..., :k]
    out = np.zeros_like(x)
    np.put_along_axis(out, order, np.take_along_axis(x, order, -1), -1)
    return out


@lru_cache(maxsize=8)
def hadamard(d: int) -> Array:
    """The orthonormal Sylvester-Hadamard matrix of size d (a power of two), H = Hᵀ = H⁻¹."""
    if d < 1 or d & (d - 1):
        raise InputError(f"the Hadamard transform needs a power-of-two width, got {d}")
    h = np.ones((1, 1), np.float64)
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return (h / math.sqrt(d)).astype(F32)


def linear(x: Array, codes: Array, multiplier: np.float32, q: SiteQuant) -> Array:
    """One BitLinear with the site's research options (module doc)."""
    if q.topk is not None:
        x = topk(x, q.topk)
    if q.hadamard:
        h = hadamard(x.shape[-1])
        v, s = quantize(x @ h, q.bits, q.stat)
        return np.asarray(((v / s) @ h) @ codes.T * multiplier, F32)
    v, s = quantize(x, q.bits, q.stat)
    return (v @ codes.T) / s * multiplier


def kv(x: Array, bits: int) -> Array:
    """K or V (heads, n, head_dim) quantized per head and position, kept dequantized."""
    v, s = quantize(x, bits)
    return (v / s).astype(F32)
