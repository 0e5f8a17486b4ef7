"""Llama-family BitNet: HF1BitLLM Llama3-8B-1.58, tiiuae Falcon3-*-1.58bit, Falcon-E.

`LlamaForCausalLM` + `quantization_config.quant_method: bitnet` (no or `bitlinear` linear_class):
uint8 HF-packed linears + `weight_scale` that divides (an inverse scale, hf.md §1.4). A plain
Llama graph (SiLU, no sub-norms), untied lm_head. GGUF arch `llama` uses the interleaved RoPE
order, so q/k rows are permuted as llama.cpp's converter does (bitnet-cpp.md §3.4, §3.6).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bitconv.model.families.base import Family


def _detect(config: Mapping[str, Any]) -> bool:
    qc = config.get("quantization_config") or {}
    return ("LlamaForCausalLM" in (config.get("architectures") or [])
            and qc.get("quant_method") == "bitnet")


FAMILY = Family(
    name="llama", arch="llama", title="Llama-family BitNet (LlamaForCausalLM, quant_method bitnet)",
    detect=_detect, sub_norms=None, permute_qk=True, tied_output=False,
    hf_class=("LlamaForCausalLM", "llama", "silu"),
)
