"""1bitLLM bitnet_b1_58-large / -3B (`BitnetForCausalLM`, remote code, latent float weights).

Llama with sub-norms `inner_attn_ln` (before o_proj) and `ffn_layernorm` (before down_proj), SiLU.
GGUF arch `bitnet`: runs in bitnet.cpp 1.0 and llama.cpp mainline, NEOX RoPE (no q/k permute),
lm_head tied to token_embd (DESIGN.md §3, §5b; bitnet-cpp.md §3.2).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gguf import GGUFValueType as T

from bitconv.families.base import Family
from bitconv.types import KV


def _detect(config: Mapping[str, Any]) -> bool:
    return "BitnetForCausalLM" in (config.get("architectures") or [])


def _kvs(config: Mapping[str, Any], arch: str) -> list[KV]:
    # bitnet.cpp 1.0 and llama.cpp's BitnetModel write a no-op linear rope scaling.
    return [KV(f"{arch}.rope.scaling.type", T.STRING, "linear"),
            KV(f"{arch}.rope.scaling.factor", T.FLOAT32, 1.0)]


FAMILY = Family(
    name="bitnet", arch="bitnet", title="1bitLLM bitnet_b1_58 (BitnetForCausalLM)",
    detect=_detect, sub_norms=("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
    permute_qk=False, tied_output=True, extra_kvs=_kvs,
)
