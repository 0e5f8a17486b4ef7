"""Research inference modes: lower-bit, sparsified or rotated activations and a low-bit KV cache,
applied on top of `exact` mode to measure what each does to a packed model (issue 17 scope 4).
Every mode is post-training: the papers train (or continue-train) with these quantizers and a
straight-through estimator; here a model trained with 8-bit absmax activations runs with them.

Sources (full texts read offline as PDF-to-Markdown transcriptions in the code-search index; the
equation numbers are the papers'):
  [a4.8]  BitNet a4.8, arXiv 2411.04965v1: §2.1 eqs. 1-7, §3 (top-K 50 %), §3.1 "Low-bit
          Attention", §3.2 ablations.
  [v2]    BitNet v2, arXiv 2504.18415v2: §2.1 eqs. 3-7, §3.1, §3.3.
  [QS]    Q-Sparse, arXiv 2407.10969v3: §2.1 eqs. 2-10, §2.3, §4.2.
  [b1]    BitNet, arXiv 2310.11453v1: §2.1 eqs. 1-12 (binary weights: model/reference.binarize).

Notation: X is the input of one BitLinear, one row per token; RoundClip(x, a, b) =
min(max(round(x), a), b) ([a4.8] eq. 4). Sites (the inputs the papers treat differently):
`attn_in` (q, k, v), `o_in` (o_proj), `ffn_in` (gate, up), `down_in` (down_proj).

Quantizers, per token (per row of X) as [v2] §2.1 states for both:
  absmax, b bits ([a4.8] eq. 3, [v2] eq. 5, [QS] eqs. 5-6 for b = 8), Qp = 2^(b-1) - 1:
      Q(X) = γ/Qp · RoundClip(Qp/(γ + ε) · X, -Qp-1, Qp),   γ = max|X|
  absmean, 4 bits only ([a4.8] eq. 7, [v2] eq. 6):
      Q(X) = β/√7 · RoundClip(√7/(β + ε) · X, -8, 7),       β = mean|X|
  ε: the papers add it to γ, β; bitconv floors the statistic at ε = 1e-5 instead
  (Qp / max(γ, ε)), as exact mode's activation quantizer (the released BitNet code, transformers'
  integrations/bitnet.py) does, so that 8-bit absmax is exact mode bit for bit. Absmax with
  b = 4, 3, 2 is this runtime's generalisation (a4.8 §3.2 compares it with absmean for 4 bits).
Top-K ([QS] eqs. 2-4 and 8, [a4.8] eq. 1), ratio k = fraction of entries kept per token:
      Y = (Q(X) ⊙ M) · Qw(W)ᵀ,   M = Top_k(|X|)
  quantize X with its dense statistic, then keep the ceil(k·d) entries of largest |X| (ties: the
  earlier position; exactly that many survive). For absmax the order does not matter (the largest
  entry is always kept); for absmean it does, and the equations' order is used. [QS] §2.1 also
  re-scales the sparsified tensor "by its L2 norm" in its full-precision variant; its quantized
  variant (eqs. 4, 8) has no such step, and neither has this runtime. Block Q-Sparse (N:M) is not
  implemented.
Hadamard ([v2] eqs. 3-4, 7: H-BitLinear): X_r = X · H_m with H_0 = (1),
  H_m = (1/√2)[[H_m-1, H_m-1], [H_m-1, -H_m-1]], i.e. the orthonormal Sylvester matrix (H = Hᵀ = H⁻¹),
  defined for d = 2^m only: other widths are refused, not padded. [v2] trains W in the rotated
  basis (Y = Qw(W) · Q(X_r), "activation rotation", §3.3); a model trained without it needs the
  rotation undone, so bitconv computes Y = (Q(X·H) · H) · Qw(W)ᵀ = Q(X·H) · (Qw(W)·H)ᵀ (the paper's
  "weight & activation rotation" with the unrotated ternary W): only the quantization error in the
  Hadamard basis remains, which is what the transform is for (spreading outlier channels). With
  top-K and Hadamard on one site (no paper combines them) the mask is taken on X, before rotating.
Without Hadamard a site computes exact mode's formula, (q @ codesᵀ) / s · multiplier, the same way.

KV cache, `kv=B[:bosN]` ([a4.8] §3.1, [v2] §3.1): K after RoPE and V, each head and position a row,
quantized with absmax B bits and kept dequantized. The papers quantize "to unsigned integers using
the absmax function" without giving the grid; bitconv uses the signed absmax grid above (an
unsigned code is q + 2^(B-1), the same values). The heads of the first position (the BOS token
whenever the tokenizer adds one, as eval's chunks do) keep more bits: [a4.8] keeps them at 4 bits
for a 3-bit cache, [v2] at 8 bits; default max(B, 4) (a4.8), `:bos8` for v2's rule. The papers'
"4-bit Q" (queries quantized too) is not offered.

Presets (PRESETS; what each paper runs at inference):
  a4.8      attn_in, ffn_in 4-bit absmean (eqs. 6-7); o_in 8-bit absmax with top-K 50 % (eq. 1,
            §3); down_in 8-bit absmax, no top-K (the ReLU² GLU, eq. 5, makes it > 80 % sparse by
            itself). The paper's 3-bit KV cache is `a4.8,kv=3`. Its FP4 variant (§2.3) is not
            offered.
  v2        every site 4-bit absmean ("per-token absmax and absmean for 8-bit and 4-bit", §2.1),
            with Hadamard on o_in and down_in (H-BitLinear replaces Wo and Wdown, §2); the 8-bit
            variant BitNet v2 (a8) is `all=8,o_in=8:hadamard,down_in=8:hadamard`.
  q-sparse  top-K 50 % then 8-bit absmax at every site ([QS] eq. 8; 50 % as its continue-training
            runs, §4.2 Table 2; its inference-optimal sparsity for 1.58-bit models is 61.25 %,
            i.e. `all=8:top0.3875`).
Not a research mode: `pack --scale-stat median` (BitNet b1.58 Reloaded, ternary.abs_median).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError
from bitconv.runtime.bitlinear import product
from bitconv.runtime.packed3 import Packed3

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
    kv_bos_bits: int | None = None  # bits of the first position's K and V (module doc)
    name: str = field(default="", compare=False)

    def site(self, site: str) -> SiteQuant | None:
        return dict(self.sites).get(site)

    @property
    def off(self) -> bool:
        return not self.sites and self.kv_bits is None


PRESETS = {
    "a4.8": Research((("attn_in", SiteQuant(4, "absmean")), ("ffn_in", SiteQuant(4, "absmean")),
                      ("o_in", SiteQuant(8, topk=0.5)), ("down_in", SiteQuant(8)))),
    "v2": Research((("attn_in", SiteQuant(4, "absmean")), ("ffn_in", SiteQuant(4, "absmean")),
                    ("o_in", SiteQuant(4, "absmean", hadamard=True)),
                    ("down_in", SiteQuant(4, "absmean", hadamard=True)))),
    "q-sparse": Research(tuple((s, SiteQuant(8, topk=0.5)) for s in SITES)),
}


def parse(spec: str) -> Research:
    """`PRESET`, `SITE=BITS[:absmean][:topK][:hadamard]` and `kv=BITS[:bosN]`, comma-separated,
    later items overriding earlier ones; SITE `all` sets every site. E.g. `a4.8,kv=3`,
    `all=4`, `o_in=8:top0.5,down_in=4:hadamard`, `v2,kv=3:bos8`."""
    sites: dict[str, SiteQuant] = {}
    kv: int | None = None
    kv_bos: int | None = None
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
                bits, _, bos = val.partition(":")
                kv = int(bits)
                kv_bos = int(bos[3:]) if bos.startswith("bos") else max(kv, 4)
                if kv not in (2, 3, 4, 8) or (bos and not bos.startswith("bos")) \
                        or kv_bos not in (2, 3, 4, 8) or kv_bos < kv:
                    raise InputError(f"kv={val}: choose BITS 8, 4, 3 or 2 and optionally :bosN, "
                                     "N >= BITS (the first position's bits)")
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
    return Research(tuple(sorted(sites.items())), kv, kv_bos, spec)


def quantize(x: Array, bits: int, stat: str = "absmax") -> tuple[Array, Array]:
    """Per-row integer codes (as float32) and scales s, x ≈ q / s (module doc)."""
    qp = F32(2 ** (bits - 1) - 1)
    if stat == "absmean":
        s = F32(math.sqrt(7)) / np.maximum(np.abs(x).mean(-1, keepdims=True, dtype=F32),
                                           F32(1e-5))
    else:
        s = qp / np.maximum(np.abs(x).max(-1, keepdims=True), F32(1e-5))
    return np.clip(np.rint(x * s), -qp - 1, qp), s


def topk_mask(x: Array, ratio: float) -> npt.NDArray[np.bool_] | None:
    """M = Top_k(|x|) per row: the ceil(ratio·d) largest |x| (stable: the earlier position wins);
    None when every entry is kept."""
    d = x.shape[-1]
    k = min(d, math.ceil(ratio * d - 1e-9))
    if k == d:
        return None
    order = np.argsort(-np.abs(x), axis=-1, kind="stable")[..., :k]
    mask = np.zeros(x.shape, bool)
    np.put_along_axis(mask, order, True, -1)
    return mask


def topk(x: Array, ratio: float) -> Array:
    """x ⊙ Top_k(|x|): the ceil(ratio·d) largest-|x| entries of each row kept, the rest 0."""
    mask = topk_mask(x, ratio)
    return x if mask is None else np.where(mask, x, F32(0))


@lru_cache(maxsize=8)
def hadamard(d: int) -> Array:
    """The orthonormal Sylvester-Hadamard matrix of size d (a power of two), H = Hᵀ = H⁻¹."""
    if d < 1 or d & (d - 1):
        raise InputError(f"the Hadamard transform needs a power-of-two width, got {d}")
    h = np.ones((1, 1), np.float64)
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return (h / math.sqrt(d)).astype(F32)


def linear(x: Array, codes: Array | Packed3, multiplier: np.float32, q: SiteQuant) -> Array:
    """One BitLinear with the site's research options (module doc). Without Hadamard the
    product is of integers (|v| ≤ 128), so the codes may be Packed3; with it, float32 only."""
    if q.hadamard:
        if isinstance(codes, Packed3):
            raise InputError("a Hadamard site multiplies float values: it takes float32 codes")
        if q.topk is not None:
            x = topk(x, q.topk)
        h = hadamard(x.shape[-1])
        v, s = quantize(x @ h, q.bits, q.stat)
        return np.asarray(((v / s) @ h) @ codes.T * multiplier, F32)
    v, s = quantize(x, q.bits, q.stat)  # Q(X) with the dense statistic, then ⊙ M (eqs. 1, 4)
    mask = None if q.topk is None else topk_mask(x, q.topk)
    if mask is not None:
        v = np.where(mask, v, F32(0))
    return product(v, codes) / s * multiplier


def kv(x: Array, bits: int, bos_bits: int | None = None, start: int | None = None) -> Array:
    """K or V (heads, n, head_dim) of positions start.. quantized per head and position with absmax
    `bits`, kept dequantized; position 0 (the BOS token) with `bos_bits` when given and known."""
    v, s = quantize(x, bits)
    out = (v / s).astype(F32)
    if bos_bits is not None and bos_bits != bits and start == 0 and x.shape[1]:
        v0, s0 = quantize(x[:, :1], bos_bits)
        out[:, :1] = v0 / s0
    return out
