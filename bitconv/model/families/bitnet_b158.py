"""Microsoft BitNet b1.58 2B4T (`BitNetForCausalLM`, model_type `bitnet`) and its -bf16 sibling.

The packed repo stores uint8 HF-packed linears + a bf16 `weight_scale` that multiplies
(autobitlinear/offline); -bf16 stores float masters (autobitlinear/online). Llama with
`attn_sub_norm`, `ffn_sub_norm`, ReLU², GQA, tied embeddings, NEOX RoPE.
GGUF arch `bitnet-b1.58` (bitnet.cpp's name for the ReLU² graph; bitnet-cpp.md §3.3, DESIGN.md §5b).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bitconv.model.families.base import HF_SUB_NORMS, Family


def _detect(config: Mapping[str, Any]) -> bool:
    return ("BitNetForCausalLM" in (config.get("architectures") or [])
            or config.get("model_type") == "bitnet")


FAMILY = Family(
    name="bitnet-b1.58", arch="bitnet-b1.58", title="Microsoft BitNet b1.58 2B4T (BitNetForCausalLM)",
    detect=_detect, sub_norms=HF_SUB_NORMS,
    permute_qk=False, tied_output=True, hf_class=("BitNetForCausalLM", "bitnet", "relu2"),
)
