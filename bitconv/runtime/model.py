"""One forward pass for every family, in float32 numpy (DESIGN.md §5, `exact` mode).

Per layer (llama-cpp.md §4.3, hf.md §1.6):
    h = rmsnorm(x)·attn_norm;  q,k,v = BitLinear(h);  RoPE;  causal GQA attention
    [rmsnorm·attn_sub_norm];   x += BitLinear_o(.)
    h = rmsnorm(x)·ffn_norm;   a = act(BitLinear_gate(h)) * BitLinear_up(h)
    [rmsnorm·ffn_sub_norm];    x += BitLinear_down(a)
    logits = rmsnorm(x)·output_norm @ (output | token_embd)ᵀ
act: ReLU² for `bitnet-b1.58` (2B4T), SiLU for `bitnet` (1bitLLM) and `llama`.
RoPE: NEOX halves for the bitnet archs; adjacent pairs for `llama`, whose q/k rows the GGUF
stores permuted (so both compute HF's rotate_half on the original rows).

BitLinear, exact mode: per-token s = 127 / max(|x|, 1e-5), q = clip(round_half_even(x·s), -128,
127), y = (q @ codesᵀ) / s · multiplier. q @ codesᵀ runs in float32 BLAS on integers whose sums
stay below 2^24, so it is exact and fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError
from bitconv.runtime.weights import Weights
from bitconv.types import TernaryTensor

F32 = np.float32
Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Spec:
    arch: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    rope_base: float
    vocab: int

    @classmethod
    def of(cls, kvs: dict[str, Any]) -> Spec:
        arch = kvs.get("general.architecture")
        if arch not in ("bitnet", "bitnet-b1.58", "llama"):
            raise InputError(f"general.architecture {arch!r} is not one bitconv can run")
        try:
            g = lambda k: kvs[f"{arch}.{k}"]  # noqa: E731
            heads = int(g("attention.head_count"))
            return cls(arch, int(g("block_count")), int(g("embedding_length")), heads,
                       int(kvs.get(f"{arch}.attention.head_count_kv", heads)),
                       int(kvs.get(f"{arch}.rope.dimension_count", int(g("embedding_length")) // heads)),
                       float(g("attention.layer_norm_rms_epsilon")),
                       float(kvs.get(f"{arch}.rope.freq_base", 10000.0)),
                       len(kvs["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in kvs
                       else int(g("vocab_size")))
        except KeyError as e:
            raise InputError(f"metadata lacks {e.args[0]!r}") from None


@dataclass
class Cache:
    """Keys and values seen so far, per layer: (kv_heads, positions, head_dim)."""

    k: list[Array] = field(default_factory=list)
    v: list[Array] = field(default_factory=list)

    @property
    def pos(self) -> int:
        return self.k[0].shape[1] if self.k else 0


class Model:
    """A loaded model; weights are held as float32 codes for BLAS (4 bytes per parameter)."""

    def __init__(self, weights: Weights) -> None:
        self.spec = Spec.of(dict(weights.kvs))
        self.w = {n: (t.codes.astype(F32), F32(t.multiplier)) if isinstance(t, TernaryTensor)
                  else np.asarray(t, F32) for n, t in weights.tensors.items()}
        s = self.spec
        inv = F32(1) / (F32(s.rope_base) ** (np.arange(0, s.head_dim, 2, dtype=np.int64)
                                            .astype(F32) / F32(s.head_dim)))
        self.inv_freq = inv.astype(F32)  # as HF computes it, in float32

    def forward(self, ids: npt.NDArray[np.integer], cache: Cache | None = None) -> Array:
        """Logits (len(ids), vocab) for `ids` following whatever `cache` already holds."""
        s, cache = self.spec, cache if cache is not None else Cache()
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= s.vocab):
            raise InputError(f"token id out of range 0..{s.vocab - 1}")
        pos0 = cache.pos
        x = self.w["token_embd.weight"][ids]
        cos, sin = self._rope(pos0, len(ids))
        for i in range(s.layers):
            x = x + self._attention(i, rmsnorm(x, self.w[f"blk.{i}.attn_norm.weight"], s.eps),
                                    cos, sin, cache)
            x = x + self._ffn(i, rmsnorm(x, self.w[f"blk.{i}.ffn_norm.weight"], s.eps))
        x = rmsnorm(x, self.w["output_norm.weight"], s.eps)
        head = self.w.get("output.weight", self.w["token_embd.weight"])
        return x @ head.T

    def _linear(self, name: str, x: Array) -> Array:
        codes, m = self.w[name]
        return bitlinear(x, codes, m)

    def _attention(self, i: int, h: Array, cos: Array, sin: Array, cache: Cache) -> Array:
        s, p, n = self.spec, f"blk.{i}.", h.shape[0]
        q = self._linear(p + "attn_q.weight", h).reshape(n, s.heads, s.head_dim).transpose(1, 0, 2)
        k = self._linear(p + "attn_k.weight", h).reshape(n, s.kv_heads, s.head_dim).transpose(1, 0, 2)
        v = self._linear(p + "attn_v.weight", h).reshape(n, s.kv_heads, s.head_dim).transpose(1, 0, 2)
        q, k = self._apply_rope(q, cos, sin), self._apply_rope(k, cos, sin)
        if len(cache.k) > i:
            k, v = np.concatenate([cache.k[i], k], 1), np.concatenate([cache.v[i], v], 1)
            cache.k[i], cache.v[i] = k, v
        else:
            cache.k.append(k)
            cache.v.append(v)
        group = s.heads // s.kv_heads  # query head j reads kv head j // group
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        att = (q @ k.transpose(0, 2, 1)) * F32(1 / np.sqrt(s.head_dim))  # (heads, n, total)
        total = k.shape[1]
        future = np.arange(total)[None, :] > (np.arange(n) + total - n)[:, None]
        att[:, future] = -np.inf
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        out = (att @ v).transpose(1, 0, 2).reshape(n, s.heads * s.head_dim)
        if p + "attn_sub_norm.weight" in self.w:
            out = rmsnorm(out, self.w[p + "attn_sub_norm.weight"], s.eps)
        return self._linear(p + "attn_output.weight", out)

    def _ffn(self, i: int, h: Array) -> Array:
        p = f"blk.{i}."
        g, u = self._linear(p + "ffn_gate.weight", h), self._linear(p + "ffn_up.weight", h)
        if self.spec.arch == "bitnet-b1.58":
            a = np.square(np.maximum(g, F32(0))) * u  # ReLU²
        else:
            a = g / (F32(1) + np.exp(-g)) * u  # SiLU
        if p + "ffn_sub_norm.weight" in self.w:
            a = rmsnorm(a, self.w[p + "ffn_sub_norm.weight"], self.spec.eps)
        return self._linear(p + "ffn_down.weight", a)

    def _rope(self, pos0: int, n: int) -> tuple[Array, Array]:
        ang = np.arange(pos0, pos0 + n, dtype=F32)[:, None] * self.inv_freq[None, :]  # (n, d/2)
        return np.cos(ang).astype(F32), np.sin(ang).astype(F32)

    def _apply_rope(self, x: Array, cos: Array, sin: Array) -> Array:
        """x: (heads, n, d). NEOX rotates (x[i], x[i+d/2]); `llama` GGUF rows are permuted so
        that the same rotation applies to adjacent pairs (x[2i], x[2i+1])."""
        if self.spec.arch == "llama":
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
            return out
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def rmsnorm(x: Array, w: Array, eps: float) -> Array:
    ms = np.mean(np.square(x, dtype=F32), axis=-1, keepdims=True, dtype=F32)
    return (x * (F32(1) / np.sqrt(ms + F32(eps)))) * w


def bitlinear(x: Array, codes: Array, multiplier: np.float32) -> Array:
    """Exact-mode BitLinear: int8 per-token activations, integer dot products in float32 BLAS."""
    s = F32(127) / np.maximum(np.abs(x).max(-1, keepdims=True), F32(1e-5))
    q = np.clip(np.rint(x * s), -128, 127)
    return (q @ codes.T) / s * multiplier
