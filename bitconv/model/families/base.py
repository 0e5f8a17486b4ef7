"""What every family shares: the Llama-shaped tensor map, shape checks and GGUF hyperparameters.

A family module only states how it differs (detection, sub-norm names, GGUF arch, q/k layout).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bitconv.errors import InputError
from bitconv.gguf_values import GGUFValueType as T
from bitconv.model.checkpoint import _MISSING, Checkpoint, field
from bitconv.types import KV

Kind = Literal["ternary", "f16", "f32"]

# HF suffix under model.layers.N. -> GGUF name under blk.N. (gguf-py tensor_mapping.py, bitnet-cpp.md §3.1)
TERNARY = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
# The model-level tensors, HF name -> GGUF name: embedding, final norm, lm_head (in this order)
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}
# The sub-norms of a BitNet graph under blk.N. in GGUF, and as transformers' BitNetForCausalLM
# names them under model.layers.N. (hf.md §1.6, §1.7): what every `hf` export writes
SUB_NORMS = ("attn_sub_norm", "ffn_sub_norm")
HF_SUB_NORMS = ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
# 1bitLLM's remote-code knobs in config.json; an `hf` export runs on transformers' own class
REMOTE_CODE_KEYS = ("auto_map", "input_bits", "weight_bits")
IGNORED = ("self_attn.rotary_emb.inv_freq",)  # recomputed by every runtime from rope_theta


@dataclass(frozen=True)
class Family:
    name: str  # registry key and `inspect` label
    arch: str  # GGUF general.architecture
    title: str  # the real models it covers
    detect: Callable[[Mapping[str, Any]], bool]
    sub_norms: tuple[str, str] | None  # HF (attn, ffn) sub-norm suffixes, or None
    permute_qk: bool  # GGUF `llama` wants q/k rows in the interleaved RoPE order
    tied_output: bool  # the arch has no output.weight: lm_head is token_embd
    # the transformers model an `hf` export is: (architectures entry, model_type, hidden_act)
    hf_class: tuple[str, str, str]
    extra_kvs: Callable[[Mapping[str, Any], str], list[KV]] = lambda config, arch: []


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor and where its values come from."""

    gguf_name: str
    source: str  # HF tensor name
    kind: Kind
    shape: tuple[int, ...]  # logical numpy shape (out, in) even when the source is packed
    scale_source: str | None = None  # HF weight_scale tensor for packed sources
    heads: int = 0  # > 0: permute rows for GGUF llama RoPE, with this many heads


def cfg(config: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """A config.json field, type-checked (checkpoint.field; missing without a default: error)."""
    return field(config, key) if default is _MISSING else field(config, key, default)


@dataclass(frozen=True)
class Dims:
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, c: Mapping[str, Any]) -> Dims:
        heads, hidden = cfg(c, "num_attention_heads"), cfg(c, "hidden_size")
        kv_heads = cfg(c, "num_key_value_heads", heads)
        head_dim = cfg(c, "head_dim", None)
        if head_dim is None and hidden % heads:
            raise InputError(f"config.json: hidden_size {hidden} is not a multiple of "
                             f"num_attention_heads {heads}")
        if heads % kv_heads:
            raise InputError(f"config.json: num_attention_heads {heads} is not a multiple of "
                             f"num_key_value_heads {kv_heads}")
        return cls(hidden, cfg(c, "intermediate_size"), cfg(c, "num_hidden_layers"), heads,
                   kv_heads, head_dim or hidden // heads, cfg(c, "vocab_size"))


def rope_theta(c: Mapping[str, Any]) -> float:
    """RoPE base: `rope_theta` (transformers 4.x) or `rope_parameters` (5.x; hf.md §1.6).
    Scaled RoPE variants are refused rather than written wrongly."""
    params = cfg(c, "rope_parameters", {})
    kind = (cfg(c, "rope_parameters.rope_type", "default") if params
            else cfg(c, "rope_scaling.rope_type", cfg(c, "rope_scaling.type", None)))
    if kind not in (None, "default") and not (kind == "linear"
                                              and cfg(c, "rope_scaling.factor", None) == 1.0):
        raise InputError(f"config.json: RoPE scaling {kind!r} is not supported yet")
    theta = cfg(c, "rope_parameters.rope_theta", cfg(c, "rope_theta", None))
    if theta is None:
        raise InputError("config.json: missing 'rope_theta' (or rope_parameters.rope_theta)")
    return float(theta)


def plan(ck: Checkpoint, fam: Family) -> list[PlannedTensor]:
    """Every GGUF tensor of the model in file order, checked against config.json."""
    d = Dims.of(ck.config)
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    out_in = {"self_attn.q_proj": (q, d.hidden), "self_attn.k_proj": (kv, d.hidden),
              "self_attn.v_proj": (kv, d.hidden), "self_attn.o_proj": (d.hidden, q),
              "mlp.gate_proj": (d.inter, d.hidden), "mlp.up_proj": (d.inter, d.hidden),
              "mlp.down_proj": (d.hidden, d.inter)}
    heads = {"self_attn.q_proj": d.heads, "self_attn.k_proj": d.kv_heads} if fam.permute_qk else {}
    emb, norm, head = TOP
    out = [_dense(ck, emb, TOP[emb], "f16", (d.vocab, d.hidden))]
    used = {emb}
    for i in range(d.layers):
        p = f"model.layers.{i}."
        for suffix, g in NORMS.items():
            out.append(_dense(ck, f"{p}{suffix}.weight", f"blk.{i}.{g}.weight", "f32", (d.hidden,)))
        if fam.sub_norms:
            (attn, ffn), (g_attn, g_ffn) = fam.sub_norms, SUB_NORMS
            out.append(_dense(ck, f"{p}{attn}.weight", f"blk.{i}.{g_attn}.weight", "f32", (q,)))
            out.append(_dense(ck, f"{p}{ffn}.weight", f"blk.{i}.{g_ffn}.weight", "f32",
                              (d.inter,)))
        for suffix, g in TERNARY.items():
            out.append(_ternary(ck, f"{p}{suffix}", f"blk.{i}.{g}.weight", out_in[suffix],
                                heads.get(suffix, 0)))
        used.update(f"{p}{s}" for s in IGNORED)
    out.append(_dense(ck, norm, TOP[norm], "f32", (d.hidden,)))
    if head in ck.tensors:
        if fam.tied_output:
            raise InputError(f"{ck.path.name}: has an untied lm_head.weight, which GGUF arch "
                             f"{fam.arch!r} cannot hold")
        out.append(_dense(ck, head, TOP[head], "f16", (d.vocab, d.hidden)))
    used.update(t.source for t in out)
    used.update(t.scale_source for t in out if t.scale_source)
    extra = sorted(set(ck.tensors) - used)
    if extra:
        raise InputError(f"{ck.path.name}: unexpected tensor {extra[0]!r} for family {fam.name} "
                         f"({len(extra)} unexpected in all)")
    return out


def _dense(ck: Checkpoint, src: str, name: str, kind: Kind, shape: tuple[int, ...]) -> PlannedTensor:
    ref = ck.ref(src)
    if ref.shape != shape:
        raise InputError(f"{src}: shape {list(ref.shape)} does not match config.json "
                         f"(expected {list(shape)})")
    if ref.dtype not in ("F32", "F16", "BF16"):
        raise InputError(f"{src}: dtype {ref.dtype} is not a float type")
    return PlannedTensor(name, src, kind, shape)


def _ternary(ck: Checkpoint, prefix: str, name: str, shape: tuple[int, int],
             heads: int) -> PlannedTensor:
    src, scale = f"{prefix}.weight", f"{prefix}.weight_scale"
    ref = ck.ref(src)
    if ref.dtype == "U8":  # HF-packed: [out/4, in] plus a one-element weight_scale
        if ref.shape != (shape[0] // 4, shape[1]) or shape[0] % 4:
            raise InputError(f"{src}: packed shape {list(ref.shape)} does not match config.json "
                             f"(expected {[shape[0] // 4, shape[1]]})")
        if ck.ref(scale).shape not in ((), (1,)):
            raise InputError(f"{scale}: expected one value, got shape {list(ck.ref(scale).shape)}")
        return PlannedTensor(name, src, "ternary", shape, scale, heads)
    if ref.shape != shape:
        raise InputError(f"{src}: shape {list(ref.shape)} does not match config.json "
                         f"(expected {list(shape)})")
    if ref.dtype not in ("F32", "F16", "BF16"):
        raise InputError(f"{src}: dtype {ref.dtype} is neither float nor HF-packed uint8")
    if scale in ck.tensors:
        raise InputError(f"{scale}: a weight_scale beside unpacked {ref.dtype} weights is ambiguous")
    return PlannedTensor(name, src, "ternary", shape, None, heads)


_HF_NAMES = ({g: h for h, g in TERNARY.items()} | {g: h for h, g in NORMS.items()}
             | dict(zip(SUB_NORMS, HF_SUB_NORMS)))


def hf_name(name: str) -> str:
    """GGUF tensor name -> the HF name an `hf` export gives it (the inverse of `plan`, with
    transformers' sub-norm names)."""
    top = {g: h for h, g in TOP.items()}
    if name in top:
        return top[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if m is None or m[2] not in _HF_NAMES:
        raise InputError(f"tensor {name!r} has no Hugging Face name (bitconv maps token_embd, "
                         "output_norm, output and the blk.N.* weights it writes)")
    return f"model.layers.{m[1]}.{_HF_NAMES[m[2]]}.weight"


def hparam_kvs(config: Mapping[str, Any], arch: str) -> list[KV]:
    """The {arch}.* hyperparameters llama.cpp and bitnet.cpp read (llama-cpp.md §3.2)."""
    d = Dims.of(config)
    kvs = [
        KV(f"{arch}.vocab_size", T.UINT32, d.vocab),
        KV(f"{arch}.context_length", T.UINT32, cfg(config, "max_position_embeddings")),
        KV(f"{arch}.embedding_length", T.UINT32, d.hidden),
        KV(f"{arch}.block_count", T.UINT32, d.layers),
        KV(f"{arch}.feed_forward_length", T.UINT32, d.inter),
        KV(f"{arch}.rope.dimension_count", T.UINT32, d.head_dim),
        KV(f"{arch}.attention.head_count", T.UINT32, d.heads),
        KV(f"{arch}.attention.head_count_kv", T.UINT32, d.kv_heads),
        KV(f"{arch}.attention.layer_norm_rms_epsilon", T.FLOAT32, cfg(config, "rms_norm_eps")),
        KV(f"{arch}.rope.freq_base", T.FLOAT32, rope_theta(config)),
    ]
    if cfg(config, "head_dim", None) is not None:
        kvs += [KV(f"{arch}.attention.key_length", T.UINT32, d.head_dim),
                KV(f"{arch}.attention.value_length", T.UINT32, d.head_dim)]
    return kvs
