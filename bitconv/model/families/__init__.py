"""Registry of model families: detection from config.json.

Each module states one family's differences from the shared Llama shape (families/base.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bitconv.errors import InputError
from bitconv.model.families import bitnet, bitnet_b158, llama
from bitconv.model.families.base import Family

# first match wins: the SiLU BitNetForCausalLM (a 1bitLLM export) before 2B4T's ReLU² one
FAMILIES: dict[str, Family] = {f.name: f for f in (bitnet.FAMILY, bitnet.HF_FAMILY,
                                                    bitnet_b158.FAMILY, llama.FAMILY)}
KNOWN = ("BitnetForCausalLM (1bitLLM), BitNetForCausalLM (BitNet b1.58 2B4T, or 1bitLLM with "
         "hidden_act silu), LlamaForCausalLM with quant_method 'bitnet'")


def of_arch(arch: str) -> Family | None:
    """The first family that writes GGUF arch `arch` (the one a GGUF of that arch is read as)."""
    return next((f for f in FAMILIES.values() if f.arch == arch), None)


def detect(config: Mapping[str, Any]) -> Family:
    """The family of a checkpoint, from its config.json."""
    for fam in FAMILIES.values():
        if fam.detect(config):
            return fam
    archs = config.get("architectures") or [config.get("model_type", "?")]
    if "LlamaForCausalLM" in archs:
        raise InputError("config.json: LlamaForCausalLM without quantization_config.quant_method "
                         "'bitnet' is not a BitNet checkpoint (for float BitNet weights, e.g. a "
                         "Falcon-E 'prequantized' or 'bfloat16' revision, add \"quantization_config\""
                         ": {\"quant_method\": \"bitnet\"} to config.json)")
    raise InputError(f"config.json: unknown architecture {', '.join(map(str, archs))}; "
                     f"bitconv knows {KNOWN}")
