"""Deterministic checkpoints in the real repos' layouts (config keys, names, dtypes, packing).

Layout facts: reference/hf.md §1.7 and §2, bitnet-cpp.md §3.2. Values are seeded per tensor
name, so the packed 2B4T fixture and its -bf16 sibling share their ternary codes: the bf16
masters are built so that absmean ternarization gives back exactly those codes and exactly
the packed repo's bf16 `weight_scale` (see `_masters`). Falcon-E's three revisions share their
codes the same way: `prequantized` masters ternarize to `main`'s codes and 1/weight_scale, and
`bfloat16` holds exactly code * bf16(1/weight_scale) (Falcon facts: synth/falcon.py).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitconv.containers.safetensors import DTYPES, Tensor, to_bf16, write_safetensors
from bitconv.synth.falcon import falcon_config, write_falcon_bpe
from bitconv.synth.tokenizers import write_llama2_spm, write_llama3_bpe

PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Shape:
    hidden: int = 256
    inter: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 1024


@dataclass(frozen=True)
class Fixture:
    """One synthetic repo: which real repo it imitates and how its weights are stored."""

    repo: str  # the real repo id it imitates
    kind: str  # "1bitllm" | "2b4t" | "2b4t-bf16" | "llama" | a FALCON kind
    shape: Shape
    shards: int = 1
    revision: str = "main"  # the Hub revision it imitates


FIXTURES: dict[str, Fixture] = {
    "bitnet_b1_58-large": Fixture("1bitLLM/bitnet_b1_58-large", "1bitllm",
                                  Shape(kv_heads=4, vocab=512)),
    "bitnet-b1.58-2B-4T": Fixture("microsoft/bitnet-b1.58-2B-4T", "2b4t", Shape()),
    "bitnet-b1.58-2B-4T-bf16": Fixture("microsoft/bitnet-b1.58-2B-4T-bf16", "2b4t-bf16", Shape()),
    "Llama3-8B-1.58-100B-tokens": Fixture("HF1BitLLM/Llama3-8B-1.58-100B-tokens", "llama",
                                          Shape(), shards=2),
    "Falcon3-1B-Instruct-1.58bit": Fixture("tiiuae/Falcon3-1B-Instruct-1.58bit", "falcon3",
                                           Shape(vocab=768)),
    # one repo, three revisions; `main` last, so {fx.repo: ...} maps the repo to its main branch
    "Falcon-E-1B-Instruct-prequantized": Fixture("tiiuae/Falcon-E-1B-Instruct",
                                                 "falcon-e-prequantized", Shape(vocab=768),
                                                 revision="prequantized"),
    "Falcon-E-1B-Instruct-bfloat16": Fixture("tiiuae/Falcon-E-1B-Instruct", "falcon-e-bf16",
                                             Shape(vocab=768), revision="bfloat16"),
    "Falcon-E-1B-Instruct": Fixture("tiiuae/Falcon-E-1B-Instruct", "falcon-e", Shape(vocab=768)),
}
# Llama-family kinds (untied lm_head, no sub-norms) and which of them store HF-packed weights.
FALCON = ("falcon3", "falcon-e", "falcon-e-prequantized", "falcon-e-bf16")
LLAMA_KINDS = ("llama", *FALCON)
PACKED = ("2b4t", "llama", "falcon3", "falcon-e")


def _rng(name: str, salt: str = "") -> np.random.Generator:
    return np.random.default_rng(zlib.crc32((salt + name).encode()))


def _codes(name: str, shape: tuple[int, int]) -> npt.NDArray[np.int8]:
    return _rng(name, "codes").integers(-1, 2, size=shape, dtype=np.int8)


def _beta(name: str) -> np.float32:
    """2B4T-like absmean steps (1-2), with 3 significant bits so k*beta/4 is exact in bf16."""
    return np.float32(_rng(name, "beta").choice([1.0, 1.25, 1.5, 1.75, 2.0]))


def _falcon_e_beta(name: str) -> np.float32:
    """Falcon-E fixtures: 1/weight_scale with weight_scale a power of two (16..128, inverse scales
    of the usual size), so the multiplier is exact in bf16 and float32 alike."""
    return np.float32(1) / np.float32(_rng(name, "scale").choice([16.0, 32.0, 64.0, 128.0]))


def _masters(name: str, shape: tuple[int, int],
             beta: np.float32 | None = None) -> npt.NDArray[np.float32]:
    """Float masters whose absmean ternarization is exactly (codes, beta).

    Every |w| is k * beta/4 for a small integer k: k in {0, 1} where the code is 0 (w/beta <= 0.25
    rounds to 0), k >= 3 elsewhere (>= 0.75 rounds to +-1, clipped). The k are then raised so
    that sum(k) = 4n, i.e. mean|W| = beta exactly, with every value exact in bf16 (k <= 15).
    """
    codes, rng = _codes(name, shape), _rng(name, "masters")
    beta = _beta(name) if beta is None else beta
    nz = codes != 0
    k = np.where(nz, rng.integers(3, 6, size=shape), rng.integers(0, 2, size=shape))
    deficit = 4 * codes.size - int(k.sum())
    idx = np.flatnonzero(nz)
    q, r = divmod(deficit, idx.size)
    k.flat[idx] += q
    k.flat[idx[:r]] += 1
    assert deficit >= 0 and k.max() <= 15, "masters out of the exact range"
    sign = np.where(nz, codes, np.where(rng.random(shape) < 0.5, -1, 1))
    return (sign * k).astype(np.float32) * (beta / np.float32(4))


def hf_pack(codes: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]:
    """transformers' pack_weights: rows in 4 quarter blocks, quarter i at bits 2i (hf.md §1.1)."""
    q = (codes + 1).astype(np.uint8).reshape(4, codes.shape[0] // 4, codes.shape[1])
    packed: npt.NDArray[np.uint8] = q[0] | (q[1] << 2) | (q[2] << 4) | (q[3] << 6)
    return packed


def _embedding(name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """N(0, 0.02) values exact in bf16 and f16 alike, so the F16 GGUF copy is lossless."""
    x = (_rng(name).standard_normal(shape, dtype=np.float32) * np.float32(0.02))
    x = (to_bf16(x).astype(np.uint32) << 16).view(np.float32)
    x[np.abs(x) < 2.0 ** -14] = 0  # below f16's normal range bf16 keeps bits f16 would lose
    return x


def _norm(name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    x = 1 + 0.1 * _rng(name).standard_normal(shape, dtype=np.float32)
    return (to_bf16(x).astype(np.uint32) << 16).view(np.float32)


def _config(fx: Fixture, tok: dict[str, Any]) -> dict[str, Any]:
    s = fx.shape
    base = {"hidden_size": s.hidden, "intermediate_size": s.inter, "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
            "vocab_size": s.vocab, "bos_token_id": tok["bos_token_id"],
            "eos_token_id": tok["eos_token_id"], "rms_norm_eps": 1e-05, "attention_bias": False,
            "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True}
    if fx.kind in FALCON:
        return falcon_config(fx.kind, s.hidden, s.inter, s.layers, s.heads, s.kv_heads, s.vocab,
                             tok)
    if fx.kind == "1bitllm":  # 1bitLLM/bitnet_b1_58-large config.json (remote code)
        return {"architectures": ["BitnetForCausalLM"], **base,
                "auto_map": {"AutoConfig": "configuration_bitnet.BitnetConfig",
                             "AutoModelForCausalLM": "modeling_bitnet.BitnetForCausalLM"},
                "hidden_act": "silu", "input_bits": 8, "max_position_embeddings": 2048,
                "model_type": "llama", "pad_token_id": tok.get("pad_token_id"),
                "pretraining_tp": 1, "rope_scaling": None, "rope_theta": 10000.0,
                "tie_word_embeddings": True, "torch_dtype": "float32", "weight_bits": 1}
    if fx.kind in ("2b4t", "2b4t-bf16"):  # microsoft/bitnet-b1.58-2B-4T(-bf16), hf.md §2
        mode = "offline" if fx.kind == "2b4t" else "online"
        return {"architectures": ["BitNetForCausalLM"], **base, "hidden_act": "relu2",
                "max_position_embeddings": 4096, "model_type": "bitnet", "rope_theta": 500000.0,
                "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                        "quantization_mode": mode}}
    # HF1BitLLM/Llama3-8B-1.58-100B-tokens: Llama + onebitllms-style bitnet quantization_config
    return {"architectures": ["LlamaForCausalLM"], **base, "hidden_act": "silu",
            "is_bitnet_config": True, "max_position_embeddings": 8192, "mlp_bias": False,
            "model_type": "llama", "pretraining_tp": 1, "rope_scaling": None,
            "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "quantization_config": {"modules_to_not_convert": None, "quant_method": "bitnet"}}


def _tensors(fx: Fixture) -> tuple[list[tuple[str, str, tuple[int, ...]]], Callable[[str], npt.NDArray[Any]]]:
    """(name, dtype, shape) of every tensor, and a function producing each one's storage."""
    s, kind = fx.shape, fx.kind
    fdt = "F32" if kind == "1bitllm" else "BF16"
    hd = s.hidden // s.heads
    q, kv = s.heads * hd, s.kv_heads * hd
    out_in = dict(zip(PROJ, [(q, s.hidden), (kv, s.hidden), (kv, s.hidden), (s.hidden, q),
                             (s.inter, s.hidden), (s.inter, s.hidden), (s.hidden, s.inter)]))
    sub = (None if kind in LLAMA_KINDS else {"1bitllm": ("self_attn.inner_attn_ln",
                                                           "mlp.ffn_layernorm")}.get(
        kind, ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")))
    ternary: dict[str, tuple[int, int]] = {}  # HF weight name -> logical (out, in)
    ents: list[tuple[str, str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", fdt, (s.vocab, s.hidden)), ("model.norm.weight", fdt, (s.hidden,))]
    if kind in LLAMA_KINDS:
        ents.append(("lm_head.weight", fdt, (s.vocab, s.hidden)))
    for i in range(s.layers):
        p = f"model.layers.{i}."
        ents += [(p + "input_layernorm.weight", fdt, (s.hidden,)),
                 (p + "post_attention_layernorm.weight", fdt, (s.hidden,))]
        if sub:
            ents += [(p + sub[0] + ".weight", fdt, (q,)), (p + sub[1] + ".weight", fdt, (s.inter,))]
        if kind == "1bitllm":
            ents.append((p + "self_attn.rotary_emb.inv_freq", "F32", (hd // 2,)))
        for proj, (o, n) in out_in.items():
            ternary[p + proj + ".weight"] = (o, n)
            if kind in PACKED:
                ents += [(p + proj + ".weight", "U8", (o // 4, n)), (p + proj + ".weight_scale", fdt, (1,))]
            else:
                ents.append((p + proj + ".weight", fdt, (o, n)))
    def fill(name: str) -> npt.NDArray[Any]:
        dt, shape = next((d, sh) for n, d, sh in ents if n == name)
        if name.endswith("inv_freq"):
            return (1.0 / 10000.0 ** (np.arange(0, hd, 2, dtype=np.float32) / hd)).astype(np.float32)
        if name.endswith(".weight_scale"):
            wn = name[: -len("_scale")]
            beta = (_beta(wn) if kind == "2b4t" else np.float32(1) / _falcon_e_beta(wn)
                    if kind == "falcon-e" else np.float32(1) / _beta(wn) * 40)  # inverse, ~20-80
            return to_bf16(np.array([beta], np.float32))
        if name in ternary:
            if dt == "U8":
                return hf_pack(_codes(name, ternary[name]))
            if kind == "falcon-e-bf16":  # onebitllms convert_to_bf16: codes / weight_scale
                w = _codes(name, ternary[name]).astype(np.float32) * _falcon_e_beta(name)
            elif kind in ("2b4t-bf16", "falcon-e-prequantized"):
                w = _masters(name, ternary[name],
                             _falcon_e_beta(name) if kind in FALCON else None)
            else:
                w = _rng(name).standard_normal(ternary[name], dtype=np.float32) * np.float32(0.02)
            return to_bf16(w) if dt == "BF16" else w
        x = _norm(name, shape) if len(shape) == 1 else _embedding(name, shape)
        return to_bf16(x) if dt == "BF16" else x

    return ents, fill


def make_fixture(name: str, dst: str | Path, shape: Shape | None = None) -> Path:
    """Write the synthetic repo `name` (a key of FIXTURES) into `dst`; returns `dst`."""
    fx = FIXTURES[name] if shape is None else replace(FIXTURES[name], shape=shape)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    # Full-size shapes keep the tiny tokenizer: GGUF pads the token list to config's vocab_size.
    writer, tiny = ((write_llama2_spm, 512) if fx.kind == "1bitllm" else
                    (write_falcon_bpe, 768) if fx.kind in FALCON else (write_llama3_bpe, 1024))
    tok = writer(dst, min(fx.shape.vocab, tiny))
    return write_repo(fx, dst, tok)


def write_repo(fx: Fixture, dst: Path, tok: dict[str, Any],
               fill: Callable[[str], npt.NDArray[Any]] | None = None) -> Path:
    """config.json, generation_config.json and the weights of `fx`'s layout into `dst`, whose
    tokenizer files are written already (`tok`: what the writer returned). `fill(name)` gives
    each tensor's storage (uint16 bf16 bits, `hf_pack`ed codes, ...; names and dtypes as in the
    real repo); the default is the seeded synthetic values. scripts/train_tiny.py passes a trained
    model's."""
    config = _config(fx, tok)
    _dump(dst / "config.json", config)
    _dump(dst / "generation_config.json", {"_from_model_config": True, "bos_token_id":
                                           config["bos_token_id"], "eos_token_id": config["eos_token_id"]})
    ents, synthetic = _tensors(fx)
    fill = synthetic if fill is None else fill
    ents.sort(key=lambda e: e[0])

    def chunks(e: Tensor) -> tuple[npt.NDArray[np.generic]]:  # the whole tensor, in its storage dtype
        arr = np.asarray(fill(e.name), dtype=DTYPES[e.dtype])
        assert arr.shape == tuple(e.shape), (e.name, arr.shape, e.shape)
        return (arr,)

    if fx.shards == 1:
        write_safetensors(dst / "model.safetensors", [Tensor(*e) for e in ents], chunks)
        return dst
    size = [int(np.prod(sh)) * DTYPES[dt].itemsize for _, dt, sh in ents]
    bounds = np.searchsorted(np.cumsum(size), np.arange(1, fx.shards) * sum(size) / fx.shards)
    weight_map: dict[str, str] = {}
    for k, part in enumerate(np.split(np.arange(len(ents)), bounds)):
        fname = f"model-{k + 1:05d}-of-{fx.shards:05d}.safetensors"
        write_safetensors(dst / fname, [Tensor(*ents[j]) for j in part], chunks)
        weight_map.update({ents[j][0]: fname for j in part})
    _dump(dst / "model.safetensors.index.json",
          {"metadata": {"total_size": sum(size)}, "weight_map": dict(sorted(weight_map.items()))})
    return dst


def _dump(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
