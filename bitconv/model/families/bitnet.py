"""1bitLLM bitnet_b1_58-large / -3B (`BitnetForCausalLM`, remote code, latent float weights).

Llama with sub-norms `inner_attn_ln` (before o_proj) and `ffn_layernorm` (before down_proj), SiLU.
GGUF arch `bitnet`: runs in bitnet.cpp 1.0 and llama.cpp mainline, NEOX RoPE (no q/k permute),
lm_head tied to token_embd (DESIGN.md §3, §5b; bitnet-cpp.md §3.2).

`HF_FAMILY` is the same graph in transformers' own layout, as `--format hf` and `repack` write it
(formats/hf.md §5): `BitNetForCausalLM` / `model_type: bitnet` with `hidden_act: silu` and the
sub-norms named `attn_sub_norm`, `ffn_sub_norm`. It packs to the same GGUF as the 1bitLLM source.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bitconv.gguf_values import GGUFValueType as T
from bitconv.model.families.base import HF_SUB_NORMS, Family
from bitconv.types import KV


def _detect(config: Mapping[str, Any]) -> bool:
    return "BitnetForCausalLM" in (config.get("architectures") or [])


def _detect_hf(config: Mapping[str, Any]) -> bool:
    # transformers' BitNetConfig defaults hidden_act to relu2 (2B4T): only an explicit silu is ours
    return ((config.get("model_type") == "bitnet"
             or "BitNetForCausalLM" in (config.get("architectures") or []))
            and config.get("hidden_act") == "silu")


def _kvs(config: Mapping[str, Any], arch: str) -> list[KV]:
    # bitnet.cpp 1.0 and llama.cpp's BitnetModel write a no-op linear rope scaling.
    return [KV(f"{arch}.rope.scaling.type", T.STRING, "linear"),
            KV(f"{arch}.rope.scaling.factor", T.FLOAT32, 1.0)]


FAMILY = Family(
    name="bitnet", arch="bitnet", title="1bitLLM bitnet_b1_58 (BitnetForCausalLM)",
    detect=_detect, sub_norms=("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
    permute_qk=False, tied_output=True, extra_kvs=_kvs,
    hf_class=("BitNetForCausalLM", "bitnet", "silu"),
)

HF_FAMILY = Family(
    name="bitnet-hf", arch="bitnet",
    title="1bitLLM bitnet_b1_58 as transformers' BitNetForCausalLM (hidden_act silu)",
    detect=_detect_hf, sub_norms=HF_SUB_NORMS,
    permute_qk=False, tied_output=True, extra_kvs=_kvs,
    hf_class=("BitNetForCausalLM", "bitnet", "silu"),
)
