"""`bitconv pack --format i2s` on every fixture family, checked against independent computations.

The expected values are computed here from the source files with other code than bitconv's:
safetensors (+ ml_dtypes for bf16) reads the inputs, the absmean rule is re-derived from
DESIGN.md §3, HF unpacking and the llama q/k permutation are re-implemented from their
references (hf.md §1.1, bitnet-cpp.md §3.4), and I2_S is decoded from formats/i2s.md.
"""
from __future__ import annotations

import json

import ml_dtypes  # noqa: F401  (registers bfloat16 so safetensors.numpy can load BF16)
import numpy as np
import pytest
from safetensors.numpy import load_file

from bitconv.containers.gguf_reader import read_gguf, tensor_array, tensor_bytes
from bitconv.stages.pack import pack

TERNARY = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_T = dict(zip(TERNARY, ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                            "ffn_down"]))


def load_all(ck):
    tensors = {}
    for f in sorted(ck.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def i2s_decode(data: np.ndarray, shape):
    """formats/i2s.md: block of 128 -> 32 bytes, byte b = e[b]<<6 | e[b+32]<<4 | e[b+64]<<2 | e[b+96]."""
    n = shape[0] * shape[1]
    body = data[: n // 4].reshape(-1, 32)
    codes = np.stack([(body >> s) & 3 for s in (6, 4, 2, 0)], axis=1)  # (blocks, 4, 32)
    t = codes.reshape(shape).astype(np.int8) - 1
    scale = data[n // 4: n // 4 + 4].view("<f4")[0]
    assert not data[n // 4 + 4:].any(), "the 28 tail bytes must be zero"
    return t, scale


def hf_unpack(packed):
    """transformers unpack_weights: bits 2i hold rows i*R .. (i+1)*R-1."""
    return np.concatenate([((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)])


def llama_permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected_ternary(name, tensors, config):
    """(codes, multiplier) the packed file must hold for HF weight `name`, computed independently."""
    w = tensors[name]
    scale = tensors.get(name + "_scale")
    if w.dtype == np.uint8:
        codes = hf_unpack(w)
        ws = np.float32(scale.astype(np.float32).reshape(-1)[0])
        autobit = config.get("quantization_config", {}).get("linear_class") == "autobitlinear"
        mult = ws if autobit else np.float32(1) / ws
    else:
        w = w.astype(np.float32)
        beta = np.float32(max(np.float32(np.abs(w).astype(np.float64).mean()), np.float32(1e-5)))
        codes = np.clip(np.round(w / beta), -1, 1).astype(np.int8)
        mult = beta
    if config["architectures"] == ["LlamaForCausalLM"]:
        heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
        proj = name.split(".")[-2]
        if proj in heads:
            codes = llama_permute(codes, heads[proj])
    return codes, mult


@pytest.mark.parametrize("name", ["bitnet_b1_58-large", "bitnet-b1.58-2B-4T",
                                  "bitnet-b1.58-2B-4T-bf16", "Llama3-8B-1.58-100B-tokens"])
def test_every_tensor_matches_an_independent_computation(name, fixtures_root, packed):
    ck = fixtures_root / name
    config = json.loads((ck / "config.json").read_text())
    tensors = load_all(ck)
    gf = read_gguf(packed(name, "i2s"))
    by_name = {t.name: t for t in gf.tensors}
    layers = config["num_hidden_layers"]
    n_ternary = 0
    for i in range(layers):
        for proj, g in GGUF_T.items():
            part = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            src = f"model.layers.{i}.{part}.{proj}.weight"
            t = by_name[f"blk.{i}.{g}.weight"]
            assert t.ggml_type == 36
            codes, mult = i2s_decode(np.asarray(tensor_bytes(gf, t)), t.shape)
            exp_codes, exp_mult = expected_ternary(src, tensors, config)
            np.testing.assert_array_equal(codes, exp_codes, err_msg=t.name)
            assert codes.any() and (codes == -1).any(), "a degenerate tensor proves nothing"
            assert mult == exp_mult, (t.name, mult, exp_mult)
            n_ternary += 1
    assert n_ternary == 7 * layers
    # Every dense tensor round-trips exactly: embeddings F16 (fixture values are f16-exact), norms F32.
    dense = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if "lm_head.weight" in tensors:
        dense["output.weight"] = "lm_head.weight"
    for i in range(layers):
        dense[f"blk.{i}.attn_norm.weight"] = f"model.layers.{i}.input_layernorm.weight"
        dense[f"blk.{i}.ffn_norm.weight"] = f"model.layers.{i}.post_attention_layernorm.weight"
        sub = {"bitnet_b1_58-large": ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
               "Llama3-8B-1.58-100B-tokens": None}.get(name, ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"))
        if sub:
            dense[f"blk.{i}.attn_sub_norm.weight"] = f"model.layers.{i}.{sub[0]}.weight"
            dense[f"blk.{i}.ffn_sub_norm.weight"] = f"model.layers.{i}.{sub[1]}.weight"
    for g, src in dense.items():
        t = by_name[g]
        got = tensor_array(gf, t)
        want = tensors[src].astype(np.float32)
        assert got.dtype == (np.float16 if g in ("token_embd.weight", "output.weight") else np.float32)
        np.testing.assert_array_equal(got.astype(np.float32), want, err_msg=g)
    assert set(by_name) == set(dense) | {f"blk.{i}.{g}.weight" for i in range(layers) for g in GGUF_T.values()}


def test_packed_and_bf16_2b4t_give_identical_i2s_tensors(packed):
    a = read_gguf(packed("bitnet-b1.58-2B-4T", "i2s"))
    b = read_gguf(packed("bitnet-b1.58-2B-4T-bf16", "i2s"))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    n = 0
    for ta, tb in zip(a.tensors, b.tensors):
        if ta.ggml_type == 36:
            assert tensor_bytes(a, ta).tobytes() == tensor_bytes(b, tb).tobytes(), ta.name
            n += 1
    assert n == 14


@pytest.mark.parametrize("name,arch,pre,model", [
    ("bitnet_b1_58-large", "bitnet", "default", "llama"),
    ("bitnet-b1.58-2B-4T", "bitnet-b1.58", "llama-bpe", "gpt2"),
    ("Llama3-8B-1.58-100B-tokens", "llama", "llama-bpe", "gpt2"),
])
def test_metadata(name, arch, pre, model, fixtures_root, packed):
    config = json.loads((fixtures_root / name / "config.json").read_text())
    kv = read_gguf(packed(name, "i2s")).kvs
    assert kv["general.architecture"] == arch
    assert kv["general.file_type"] == 40
    assert kv[f"{arch}.block_count"] == config["num_hidden_layers"]
    assert kv[f"{arch}.embedding_length"] == config["hidden_size"]
    assert kv[f"{arch}.feed_forward_length"] == config["intermediate_size"]
    assert kv[f"{arch}.attention.head_count"] == config["num_attention_heads"]
    assert kv[f"{arch}.attention.head_count_kv"] == config["num_key_value_heads"]
    assert kv[f"{arch}.rope.freq_base"] == config["rope_theta"]
    assert kv[f"{arch}.rope.dimension_count"] == config["hidden_size"] // config["num_attention_heads"]
    assert kv["tokenizer.ggml.model"] == model
    assert kv["tokenizer.ggml.pre"] == pre
    assert len(kv["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert kv["tokenizer.ggml.bos_token_id"] == config["bos_token_id"]
    if model == "gpt2":
        assert len(kv["tokenizer.ggml.merges"]) > 0
        assert "tokenizer.chat_template" in kv


def test_pack_is_deterministic(fixtures_root, tmp_path, packed):
    again = pack(fixtures_root / "bitnet-b1.58-2B-4T-bf16", out=tmp_path / "again.gguf").path
    assert again.read_bytes() == packed("bitnet-b1.58-2B-4T-bf16", "i2s").read_bytes()


def test_the_progress_bar_changes_no_byte(fixtures_root, tmp_path, packed, capsys):
    """progress=True draws tqdm's bar on stderr (stages/progress.py imports tqdm only then)."""
    shown = pack(fixtures_root / "bitnet-b1.58-2B-4T-bf16", out=tmp_path / "shown.gguf",
                 progress=True).path
    assert shown.read_bytes() == packed("bitnet-b1.58-2B-4T-bf16", "i2s").read_bytes()
    out, err = capsys.readouterr()
    assert out == "" and "pack i2s" in err


@pytest.mark.parametrize("name", ["bitnet-b1.58-2B-4T", "bitnet-b1.58-2B-4T-bf16",
                                  "Llama3-8B-1.58-100B-tokens", "bitnet_b1_58-large"])
def test_row_chunking_does_not_change_a_byte(name, tmp_path, monkeypatch):
    """Chunks far smaller than a tensor (straddling HF quarter blocks, several heads per chunk,
    multi-chunk absmean) give the same file as one chunk per tensor."""
    import bitconv.model.tensors as pk
    from bitconv.synth.checkpoints import Shape, make_fixture
    src = make_fixture(name, tmp_path / name, Shape(hidden=512, inter=768, heads=8, kv_heads=2,
                                                     vocab=1024 if "large" not in name else 512))
    whole = pack(src, out=tmp_path / "whole.gguf").path
    monkeypatch.setattr(pk, "CHUNK_ELEMS", 3000)  # a few rows: chunk boundaries everywhere
    small = pack(src, out=tmp_path / "small.gguf").path
    assert whole.read_bytes() == small.read_bytes()
