"""One forward pass for every family, in float32 numpy (DESIGN.md §5).

Per layer (llama-cpp.md §4.3, hf.md §1.6):
    h = rmsnorm(x)·attn_norm;  q,k,v = BitLinear(h);  RoPE;  causal GQA attention
    [rmsnorm·attn_sub_norm];   x += BitLinear_o(.)
    h = rmsnorm(x)·ffn_norm;   a = act(BitLinear_gate(h)) * BitLinear_up(h)
    [rmsnorm·ffn_sub_norm];    x += BitLinear_down(a)
    logits = rmsnorm(x)·output_norm @ (output | token_embd)ᵀ
act: ReLU² for `bitnet-b1.58` (2B4T), SiLU for `bitnet` (1bitLLM) and `llama`.
RoPE: NEOX halves for the bitnet archs; adjacent pairs for `llama`, whose q/k rows the GGUF
stores permuted (so both compute HF's rotate_half on the original rows).

BitLinear and its modes (exact, bitnet.cpp, llama.cpp): runtime/bitlinear.py.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.errors import InputError
from bitconv.runtime.bitlinear import INTEGER_MODES, bitlinear, check_mode, q8_0_group
from bitconv.runtime.packed3 import Packed3
from bitconv.runtime.research import SITE_OF, Research
from bitconv.runtime.research import kv as research_kv
from bitconv.runtime.research import linear as research_linear
from bitconv.runtime.weights import Stored, Weights
from bitconv.types import TernaryTensor
from bitconv.workers import Workers

F32 = np.float32
Array = npt.NDArray[np.float32]
# how the ternary codes are held (Model's doc; runtime/memory.py: what each needs), largest first
REPRESENTATIONS = ("f32", "f64x3", "i8", "stream")
KEPT = {"f32": F32, "i8": np.int8}
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


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
            def g(k: str) -> Any:
                return kvs[f"{arch}.{k}"]

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

    def check(self, layout: Mapping[str, Stored]) -> None:
        """The attention hyperparameters against the tensors' shapes, before anything is read:
        a file whose head counts do not divide its q/k/v/o weights is refused in one line."""
        s, key = self, f"{self.arch}.attention"
        if s.heads <= 0 or s.kv_heads <= 0 or s.heads % s.kv_heads or s.head_dim % 2:
            raise InputError(f"{key}.head_count {s.heads} and head_count_kv {s.kv_heads} with "
                             f"head dim {s.head_dim}: not a grouped-query attention bitconv runs")
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        want = {"attn_q": (q, s.hidden), "attn_k": (kv, s.hidden), "attn_v": (kv, s.hidden),
                "attn_output": (s.hidden, q)}
        for i in range(s.layers):
            for part, shape in want.items():
                got = layout.get(f"blk.{i}.{part}.weight")
                if got is not None and tuple(got.shape) != shape:
                    raise InputError(
                        f"blk.{i}.{part}.weight is {tuple(got.shape)}, but {key}.head_count "
                        f"{s.heads}, head_count_kv {s.kv_heads} and head dim {s.head_dim} make "
                        f"it {shape}")


@dataclass
class Cache:
    """Keys and values seen so far, per layer: (kv_heads, positions, head_dim)."""

    k: list[Array] = field(default_factory=list)
    v: list[Array] = field(default_factory=list)

    @property
    def pos(self) -> int:
        return self.k[0].shape[1] if self.k else 0


def preferred(mode: str, research: Research | None = None) -> tuple[str, ...]:
    """The representations worth trying for `mode`, fastest first (runtime/memory.py): packed
    float64 codes for the integer modes and the research options whose BitLinear inputs are
    integers too (faster and smaller than float32), float32 for the others (llama.cpp mode's
    products are per block, a Hadamard site's on float values); then i8, then stream."""
    hadamard = research is not None and any(q.hadamard for _, q in research.sites)
    fast = "f64x3" if mode in INTEGER_MODES and not hadamard else "f32"
    return fast, "i8", "stream"


class Model:
    """A runnable model over (lazy) Weights, in one of the BitLinear modes (runtime/bitlinear.py).

    `codes` is how the ternary weights are held (runtime/memory.py chooses it by the memory
    there is; each gives the same numbers):
      f32     codes kept as float32 for BLAS (4 bytes per parameter, 9.6 GB with the float32 LM
              head at 2B4T size);
      f64x3   three rows of codes to a float64 (runtime/packed3.py; 8/3 bytes a parameter):
              where `preferred` offers it (integer products of whole rows), the fastest there;
      i8      codes kept as int8 (1 byte), widened into one float32 buffer that every matmul
              reuses (fresh memory is slow to touch);
      stream  nothing kept: each matmul decodes its tensor from the file into that buffer, so
              memory stays near one tensor plus the dense ones (what `verify` and `logits` use).
    Kept codes are transposed once to contiguous (in, out), and the buffer has that layout too,
    so every matmul is one BLAS call without a copy (llama.cpp mode's (B, 256, out) blocks are
    views) and the same call in every representation. `load()` fills the cache on two threads
    up front. Ternary tensors run as BitLinear; a dense float tensor in their place (latent
    weights, for drift reports) runs as a plain float32 matmul, kept as float32 unless streamed.
    Dense tensors are float32, except an untied input embedding: kept as the file stores it
    (a view of the mapped file for a GGUF), its rows widened per token.

    Modes other than `exact` also round like their engine outside the matmuls: the hidden state
    is rounded to fp16 before the F16 LM head (both engines), and `bitnet.cpp` keeps K/V in fp16
    and rounds Q and the attention probabilities to fp16 (its default, non-flash path;
    bitnet-cpp.md §5.4). `llama.cpp` mode assumes an F32 KV cache and no flash attention, the
    settings the interop tests ask llama.cpp for (llama-cpp.md §4.6).
    """

    def __init__(self, weights: Weights, mode: str = "exact", codes: str = "f32",
                 research: Research | None = None) -> None:
        self.spec = Spec.of(dict(weights.kvs))
        self.spec.check(weights.layout)
        self.mode = check_mode(mode)
        if codes not in REPRESENTATIONS:
            raise InputError(f"unknown weight representation {codes!r}; choose one of: "
                             f"{', '.join(REPRESENTATIONS)}")
        self.codes = codes
        # research modes (runtime/research.py) apply on top of exact mode only
        self.research = research if research is not None and not research.off else None
        if self.research is not None and self.mode != "exact":
            raise InputError(f"research modes run on exact mode, not {mode!r}")
        if codes == "f64x3" and preferred(self.mode, self.research)[0] != codes:
            raise InputError("packed float64 codes (f64x3) serve exact and bitnet.cpp modes "
                             "and research options without Hadamard sites; use f32")
        self.group = q8_0_group(weights.format)  # llama.cpp mode: Q8_0 activations for Q2_0
        self.weights = weights
        self._cache: dict[str, Any] = {}
        self._buf = np.empty(0, F32)  # the widened codes of the current matmul
        s = self.spec
        inv = F32(1) / (F32(s.rope_base) ** (np.arange(0, s.head_dim, 2, dtype=np.int64)
                                            .astype(F32) / F32(s.head_dim)))
        self.inv_freq = inv.astype(F32)  # as HF computes it, in float32

    def load(self, threads: int = 2) -> Model:
        """Decode and convert every tensor the representation keeps now, `threads` at a time,
        instead of on first use. Returns the model."""
        names = [n for n in self.weights.order if n not in self._cache
                 and not (self.codes == "stream" and _linear_name(n))]
        if "token_embd.weight" in names and self._untied:
            names.remove("token_embd.weight")
            self._embedding()
        with Workers(threads) as pool:
            self._cache.update(zip(names, pool.map(self._convert, names)))
        return self

    def _convert(self, name: str) -> Any:
        """Dense tensors as float32; ternary ones as (codes (out, K), multiplier), the codes a
        view of contiguous (K, out) memory in the kept dtype, or as decoded when streamed."""
        t = self.weights.tensors[name]
        if not isinstance(t, TernaryTensor):
            return np.asarray(t, F32)
        if self.codes == "stream":
            return t.codes, F32(t.multiplier)
        if self.codes == "f64x3":
            return Packed3.of(t.codes), F32(t.multiplier)
        return np.ascontiguousarray(t.codes.T, dtype=KEPT[self.codes]).T, F32(t.multiplier)

    def _get(self, name: str) -> Any:
        got = self._cache.get(name)
        if got is None:
            got = self._convert(name)
            if self.codes != "stream" or not _linear_name(name):
                self._cache[name] = got
        return got

    def _dense(self, name: str) -> Array:
        return self._get(name)  # type: ignore[no-any-return]

    def _widen(self, codes: npt.NDArray[Any]) -> Array:
        """`codes` (out, K) as float32 in the reusable buffer, laid out (K, out) contiguous."""
        if self._buf.size < codes.size:
            self._buf = np.empty(codes.size, F32)
        out, k = codes.shape
        wide = self._buf[:codes.size].reshape(k, out).T
        np.copyto(wide, codes)
        return wide

    @property
    def _untied(self) -> bool:
        return self._has("output.weight")

    def _embedding(self) -> npt.NDArray[Any]:
        """The untied input embedding as stored (float16 or float32), kept."""
        got = self._cache.get("token_embd.weight")
        if got is None:  # a GGUF's is a read-only view of the mapped file: asarray copies nothing
            got = self._cache["token_embd.weight"] = np.asarray(
                self.weights.tensors["token_embd.weight"])
        return got

    def _embed(self, ids: npt.NDArray[np.integer]) -> Array:
        if self._untied:  # rows widened as used: the same float32 values as the whole table's
            return np.asarray(self._embedding()[ids], F32)
        rows: Array = self._dense("token_embd.weight")[ids]  # tied: the LM head's float32 table
        return rows

    def _has(self, name: str) -> bool:
        return name in self.weights.tensors

    def forward(self, ids: npt.NDArray[np.integer], cache: Cache | None = None,
                last: bool = False) -> Array:
        """Logits (len(ids), vocab) for `ids` following whatever `cache` already holds; with
        `last`, only the last position's (1, vocab), as a prompt's prefill needs (the LM head
        then runs on one row, and its float32 sums may differ from the full run's in the ulp)."""
        s, cache = self.spec, cache if cache is not None else Cache()
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= s.vocab):
            raise InputError(f"token id out of range 0..{s.vocab - 1}")
        pos0 = cache.pos
        x = self._embed(ids)
        cos, sin = self._rope(pos0, len(ids))
        for i in range(s.layers):
            x = x + self._attention(i, self._norm(x, f"blk.{i}.attn_norm.weight"),
                                    cos, sin, cache)
            x = x + self._ffn(i, self._norm(x, f"blk.{i}.ffn_norm.weight"))
        return self._head(self._norm(x[-1:] if last else x, "output_norm.weight"))

    def _head(self, x: Array) -> Array:
        """The LM head's logits for normed hidden states `x`."""
        head = self._dense("output.weight" if self._has("output.weight") else "token_embd.weight")
        if self.mode != "exact":
            x = x.astype(np.float16).astype(F32)  # ggml's F16 x F32 matmul rounds x to fp16
        y: Array = x @ head.T
        return y

    def _norm(self, x: Array, name: str) -> Array:
        return rmsnorm(x, self._dense(name), self.spec.eps, double=self.mode != "exact")

    def _linear(self, name: str, x: Array) -> Array:
        w = self._get(name)
        if isinstance(w, tuple):
            codes = w[0] if isinstance(w[0], Packed3) or w[0].dtype == F32 else self._widen(w[0])
            site = self.research and self.research.site(SITE_OF.get(name.split(".")[-2], ""))
            if site:
                return research_linear(x, codes, w[1], site)
            return bitlinear(x, codes, w[1], self.mode, self.group)
        y: Array = x @ w.T  # latent float weights
        return y

    def _attention(self, i: int, h: Array, cos: Array, sin: Array, cache: Cache) -> Array:
        s, p, n = self.spec, f"blk.{i}.", h.shape[0]
        q = self._linear(p + "attn_q.weight", h).reshape(n, s.heads, s.head_dim).transpose(1, 0, 2)
        k = self._linear(p + "attn_k.weight", h).reshape(n, s.kv_heads, s.head_dim).transpose(1, 0, 2)
        v = self._linear(p + "attn_v.weight", h).reshape(n, s.kv_heads, s.head_dim).transpose(1, 0, 2)
        q, k = self._apply_rope(q, cos, sin), self._apply_rope(k, cos, sin)
        r = self.research
        if r is not None and r.kv_bits is not None:
            start = cache.k[i].shape[1] if len(cache.k) > i else 0
            k, v = (research_kv(k, r.kv_bits, r.kv_bos_bits, start),
                    research_kv(v, r.kv_bits, r.kv_bos_bits, start))
        if self.mode == "bitnet.cpp":
            q, k, v = _f16(q), _f16(k), _f16(v)  # fp16 KV cache; Q converted for K_f16 · Q
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
        if self.mode == "bitnet.cpp":
            att = _f16(att)  # P converted to fp16 for V_f16 · P
        out = (att @ v).transpose(1, 0, 2).reshape(n, s.heads * s.head_dim)
        if self._has(p + "attn_sub_norm.weight"):
            out = self._norm(out, p + "attn_sub_norm.weight")
        return self._linear(p + "attn_output.weight", out)

    def _ffn(self, i: int, h: Array) -> Array:
        p = f"blk.{i}."
        g, u = self._linear(p + "ffn_gate.weight", h), self._linear(p + "ffn_up.weight", h)
        if self.spec.arch == "bitnet-b1.58":
            a = np.square(np.maximum(g, F32(0))) * u  # ReLU²
        else:
            den: Array = np.exp(-g) + F32(1)
            a = g / den * u  # SiLU
        if self._has(p + "ffn_sub_norm.weight"):
            a = self._norm(a, p + "ffn_sub_norm.weight")
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


def _linear_name(name: str) -> bool:
    """A BitLinear's weight: blk.N.<linear>.weight."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blk" and parts[2] in LINEARS


def rmsnorm(x: Array, w: Array, eps: float, double: bool = False) -> Array:
    """x / sqrt(mean(x²) + eps) · w. `double`: ggml's order (ggml-cpu/ops.cpp
    ggml_compute_forward_rms_norm_f32: float32 squares summed in double, the mean rounded to
    float32), which the engines' modes follow so that fewer activations differ from theirs by an
    ulp; transformers (exact mode) takes the mean in float32."""
    if double:
        total = np.sum(np.square(x, dtype=F32), axis=-1, keepdims=True, dtype=np.float64)
        ms: Array = (total / x.shape[-1]).astype(F32)
    else:
        ms = np.mean(np.square(x, dtype=F32), axis=-1, keepdims=True, dtype=F32)
    y: Array = (x * (F32(1) / np.sqrt(ms + F32(eps)))) * w
    return y


def _f16(x: Array) -> Array:
    return x.astype(np.float16).astype(F32)
