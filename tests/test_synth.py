"""The synthetic checkpoints have the real repos' layouts: counts, names, shapes and dtypes
checked against facts recorded in shared/reference/hf.md §1.7 and §2 (not derived from our code)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from bitconv.model.checkpoint import load_checkpoint
from bitconv.synth.checkpoints import FIXTURES, Shape, _tensors

FULL_2B4T = Shape(hidden=2560, inter=6912, layers=30, heads=20, kv_heads=5, vocab=128256)
FULL_LARGE = Shape(hidden=1536, inter=4096, layers=24, heads=16, kv_heads=16, vocab=32002)


def layout(name, shape):
    ents, _ = _tensors(replace(FIXTURES[name], shape=shape))
    return {n: (dt, sh) for n, dt, sh in ents}


def test_2b4t_packed_layout_matches_hf_md():
    t = layout("bitnet-b1.58-2B-4T", FULL_2B4T)
    assert len(t) == 542  # hf.md §1.7: 30 x 18 + 2
    p = "model.layers.7."
    assert t[p + "self_attn.q_proj.weight"] == ("U8", (640, 2560))
    assert t[p + "self_attn.k_proj.weight"] == ("U8", (160, 2560))
    assert t[p + "mlp.gate_proj.weight"] == ("U8", (1728, 2560))
    assert t[p + "mlp.down_proj.weight"] == ("U8", (640, 6912))
    assert t[p + "mlp.down_proj.weight_scale"] == ("BF16", (1,))
    assert t[p + "self_attn.attn_sub_norm.weight"] == ("BF16", (2560,))
    assert t[p + "mlp.ffn_sub_norm.weight"] == ("BF16", (6912,))
    assert t["model.embed_tokens.weight"] == ("BF16", (128256, 2560))
    assert "lm_head.weight" not in t
    params = sum(int(np.prod(sh)) * (4 if dt == "U8" else 1) for n, (dt, sh) in t.items()
                 if not n.endswith("weight_scale"))
    assert params == 2_412_820_480  # hf.md §1.7


def test_2b4t_bf16_layout_matches_hf_md():
    t = layout("bitnet-b1.58-2B-4T-bf16", FULL_2B4T)
    assert len(t) == 332  # hf.md §1.7: 30 x 11 + 2
    assert t["model.layers.0.self_attn.k_proj.weight"] == ("BF16", (640, 2560))
    assert t["model.layers.0.mlp.down_proj.weight"] == ("BF16", (2560, 6912))
    assert not any(n.endswith("weight_scale") for n in t)


def test_1bitllm_large_layout_matches_hf_md():
    t = layout("bitnet_b1_58-large", FULL_LARGE)
    assert len(t) == 290  # hf.md §2: 290 tensors, inv_freq per layer, no lm_head
    assert t["model.layers.3.self_attn.inner_attn_ln.weight"] == ("F32", (1536,))
    assert t["model.layers.3.mlp.ffn_layernorm.weight"] == ("F32", (4096,))
    assert t["model.layers.3.self_attn.rotary_emb.inv_freq"] == ("F32", (48,))
    assert "lm_head.weight" not in t


def test_llama_fixture_is_sharded_with_an_index(fixtures_root):
    ck = fixtures_root / "Llama3-8B-1.58-100B-tokens"
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    loaded = load_checkpoint(ck)
    assert index["metadata"]["total_size"] == sum(r.nbytes for r in loaded.tensors.values())
    assert loaded.tensors["lm_head.weight"].dtype == "BF16"
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["quantization_config"] == {"modules_to_not_convert": None, "quant_method": "bitnet"}
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is False


def test_configs_declare_the_real_quantization(fixtures_root):
    q = lambda n: json.loads((fixtures_root / n / "config.json").read_text()).get("quantization_config")
    assert q("bitnet-b1.58-2B-4T") == {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                       "quantization_mode": "offline"}
    assert q("bitnet-b1.58-2B-4T-bf16")["quantization_mode"] == "online"
    assert q("bitnet_b1_58-large") is None
