"""Bad inputs: one line on stderr, exit code 1, nothing left behind. Messages are pinned exactly."""
from __future__ import annotations

import json
import struct

import pytest

from bitconv.synth.checkpoints import Shape, make_fixture
from tests.support.cli import cli
from tests.support.files import patch_bytes, tensor_range

Q0 = "model.layers.0.self_attn.q_proj.weight"


def assert_fails(src, out, message):
    """`bitconv pack SRC --format i2s -o OUT` refuses with the one line `Error: MESSAGE` on
    stderr, prints nothing on stdout, and leaves no output, finished or not."""
    result = cli("pack", src, "--format", "i2s", "-o", out)
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.exception)
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""
    assert not out.exists()
    assert not out.with_name(out.name + ".incomplete").exists()


def test_success_prints_only_the_path(fixtures_root, tmp_path):
    out = tmp_path / "m.gguf"
    r = cli("pack", fixtures_root / "bitnet-b1.58-2B-4T", "--format", "i2s", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{out}\n"
    assert out.stat().st_size > 0


def test_default_output_name(fixtures_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("pack", fixtures_root / "bitnet-b1.58-2B-4T")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "bitnet-b1.58-2B-4T-i2s.gguf\n"
    assert (tmp_path / "bitnet-b1.58-2B-4T-i2s.gguf").is_file()


def test_missing_config(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    (ck / "config.json").unlink()
    out = tmp_path / "o.gguf"
    assert_fails(ck, out,
                 f"{ck}: no config.json (is this a Hugging Face checkpoint directory?)")


def test_malformed_config(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    (ck / "config.json").write_text('{"architectures": ["BitNetForCausalLM"],\n "hidden_size": }')
    out = tmp_path / "o.gguf"
    assert_fails(ck, out,
                 f"{ck}/config.json: malformed JSON (Expecting value at line 2)")


def test_unknown_architecture(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["MistralForCausalLM"], "mistral"
    (ck / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o.gguf"
    assert_fails(ck, out,
                 "config.json: unknown architecture MistralForCausalLM; bitconv knows "
                 "BitnetForCausalLM (1bitLLM), BitNetForCausalLM (BitNet b1.58 2B4T, or 1bitLLM "
                 "with hidden_act silu), LlamaForCausalLM with quant_method 'bitnet'")


def test_missing_tensor(fixture_copy, tmp_path):
    ck = fixture_copy("Llama3-8B-1.58-100B-tokens")
    victim = "model.layers.1.mlp.up_proj.weight"
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    shard = ck / index["weight_map"].pop(victim)
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    # Drop it from the shard too: header entry and bytes (a gap in the data is refused).
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    b, e = header.pop(victim)["data_offsets"]
    for info in header.values():
        if isinstance(info, dict) and "data_offsets" in info and info["data_offsets"][0] >= e:
            info["data_offsets"] = [o - (e - b) for o in info["data_offsets"]]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    data = raw[8 + n:]
    shard.write_bytes(struct.pack("<Q", len(blob)) + blob + data[:b] + data[e:])
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, f"{ck.name}: missing tensor {victim!r}")


def test_shape_i2s_cannot_pack(tmp_path):
    ck = make_fixture("bitnet-b1.58-2B-4T", tmp_path / "odd", Shape(inter=320))
    out = tmp_path / "o.gguf"
    assert_fails(ck, out,
                 "model.layers.0.mlp.down_proj.weight: i2s needs in_features % 128 == 0, got 320")


def test_packed_byte_with_code_3(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    start, _, dtype = tensor_range(ck / "model.safetensors", Q0)
    assert dtype == "U8"
    # packed row 2, column 5; bits 4-5 = 0b11 -> quarter 2 holds code 3
    patch_bytes(ck / "model.safetensors", start + 2 * 256 + 5, bytes([0b00110101]))
    out = tmp_path / "o.gguf"
    assert_fails(ck, out,
                 f"{Q0}: packed byte holds code 3 (not a ternary value) at row 2 (bits 4-5), column 5")


@pytest.mark.parametrize("bits,what", [(0x7FC0, "NaN"), (0x7F80, "+Inf")])
def test_nan_or_inf_weight(fixture_copy, tmp_path, bits, what):
    ck = fixture_copy("bitnet-b1.58-2B-4T-bf16")
    start, _, dtype = tensor_range(ck / "model.safetensors", Q0)
    assert dtype == "BF16"
    patch_bytes(ck / "model.safetensors", start + 2 * 1000, struct.pack("<H", bits))
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, f"{Q0}: holds NaN or Inf values; refusing to ternarize")


def test_scale_contradicting_the_rule(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    start, _, dtype = tensor_range(ck / "model.safetensors", Q0 + "_scale")
    assert dtype == "BF16"
    patch_bytes(ck / "model.safetensors", start, struct.pack("<H", 0x4248))  # bf16 50.0: an inverse
    out = tmp_path / "o.gguf"
    assert_fails(ck, out,
                 f"{Q0}_scale: weight_scale 50 contradicts the declared rule (autobitlinear "
                 "multiplies, so it should be below 20); pass --scale-rule to force one")
    r = cli("pack", ck, "-o", out, "--scale-rule", "multiply")
    assert r.exit_code == 0, r.stderr


def test_inverse_scale_declared_as_divide_but_small(fixture_copy, tmp_path):
    ck = fixture_copy("Llama3-8B-1.58-100B-tokens")
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    shard = ck / index["weight_map"][Q0 + "_scale"]
    start, _, _ = tensor_range(shard, Q0 + "_scale")
    patch_bytes(shard, start, struct.pack("<H", 0x3FC0))  # bf16 1.5: looks like a beta
    out = tmp_path / "o.gguf"
    assert_fails(ck, out,
                 f"{Q0}_scale: weight_scale 1.5 contradicts the declared rule (bitlinear divides, "
                 "so it should be at least 5); pass --scale-rule to force one")


def test_output_exists_without_force(fixtures_root, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    r = cli("pack", fixtures_root / "bitnet-b1.58-2B-4T", "--format", "i2s", "-o", out)
    assert r.exit_code == 1
    assert r.stderr == f"Error: {out}: already exists; pass --force to overwrite\n"
    assert r.stdout == "" and not (tmp_path / "o.gguf.incomplete").exists()
    assert out.read_bytes() == b"precious"
    r = cli("pack", fixtures_root / "bitnet-b1.58-2B-4T", "-o", out, "--force")
    assert r.exit_code == 0 and out.read_bytes()[:4] == b"GGUF"


def test_truncated_safetensors(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    st = ck / "model.safetensors"
    size = st.stat().st_size
    with open(st, "r+b") as f:
        f.truncate(size - 1000)
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, f"model.safetensors: truncated safetensors file "
                 f"(data ends at byte {size}, file has {size - 1000})")


def test_failure_midway_leaves_nothing_and_keeps_existing_output(fixture_copy, tmp_path):
    """A corrupt late tensor fails after the header was written: the old file stays intact."""
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    name = "model.layers.1.mlp.down_proj.weight"
    start, _, _ = tensor_range(ck / "model.safetensors", name)
    patch_bytes(ck / "model.safetensors", start, b"\xff")
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    r = cli("pack", ck, "-o", out, "--force")
    assert r.exit_code == 1
    assert r.stderr == (f"Error: {name}: packed byte holds code 3 (not a ternary value) at row 0 "
                        "(bits 0-1), column 0\n")
    assert out.read_bytes() == b"old"
    assert not (tmp_path / "o.gguf.incomplete").exists()


def edit_config(ck, **changes):
    cfg = json.loads((ck / "config.json").read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k)
        else:
            cfg[k] = v
    (ck / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,message", [
    ({"hidden_size": "256"}, '{cfg}: hidden_size must be a positive integer below 2^31, got "256"'),
    ({"num_attention_heads": 0},
     "{cfg}: num_attention_heads must be a positive integer below 2^31, got 0"),
    ({"architectures": 5}, "{cfg}: architectures must be a list of class names, got 5"),
    ({"quantization_config": "bitnet"}, '{cfg}: quantization_config must be an object, got "bitnet"'),
    ({"hidden_size": ...}, "config.json: missing 'hidden_size'"),
    ({"num_key_value_heads": 3}, ("config.json: num_attention_heads 4 is not a multiple of "
                                  "num_key_value_heads 3")),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     "config.json: RoPE scaling 'llama3' is not supported yet"),
    ({"quantization_config": ...}, (
        "config.json: LlamaForCausalLM without "
        "quantization_config.quant_method 'bitnet' is not a BitNet checkpoint (for float BitNet "
        "weights, e.g. a Falcon-E 'prequantized' or 'bfloat16' revision, add \"quantization_config\""
        ": {{\"quant_method\": \"bitnet\"}} to config.json)")),
])
def test_bad_config_values(fixture_copy, tmp_path, changes, message):
    ck = fixture_copy("Llama3-8B-1.58-100B-tokens")
    edit_config(ck, **changes)
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, message.format(cfg=ck / "config.json"))


def test_config_that_is_not_an_object(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    (ck / "config.json").write_text("[1, 2]")
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, f"{ck}/config.json: expected a JSON object")


def test_unexpected_tensor(fixture_copy, tmp_path):
    """A tensor bitconv would otherwise drop silently (here: a per-projection rms_norm)."""
    import numpy as np

    from bitconv.containers.safetensors import Tensor, write_safetensors
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    write_safetensors(ck / "extra.safetensors",
                      [Tensor("model.layers.0.mlp.down_proj.rms_norm.weight", "F32", (512,))],
                      lambda e: [np.ones(512, np.float32)])
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, "bitnet-b1.58-2B-4T: unexpected tensor "
                 "'model.layers.0.mlp.down_proj.rms_norm.weight' for family bitnet-b1.58 "
                 "(1 unexpected in all)")


def test_non_finite_weight_scale(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    start, _, _ = tensor_range(ck / "model.safetensors", Q0 + "_scale")
    patch_bytes(ck / "model.safetensors", start, struct.pack("<H", 0x7FC0))
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, f"{Q0}_scale: weight_scale nan is not a positive finite number")


def test_nan_in_a_dense_tensor(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    start, _, _ = tensor_range(ck / "model.safetensors", "model.norm.weight")
    patch_bytes(ck / "model.safetensors", start + 6, struct.pack("<H", 0x7FC0))
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, "model.norm.weight: holds NaN or Inf values")


def test_index_pointing_outside(fixture_copy, tmp_path):
    ck = fixture_copy("Llama3-8B-1.58-100B-tokens")
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "../model-00001-of-00002.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, f"{ck}/model.safetensors.index.json: shard name "
                 "'../model-00001-of-00002.safetensors' points outside the checkpoint")


def test_malformed_safetensors_header(fixture_copy, tmp_path):
    ck = fixture_copy("bitnet-b1.58-2B-4T")
    blob = b'[1, 2]'
    (ck / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    out = tmp_path / "o.gguf"
    assert_fails(ck, out,
                 "model.safetensors: malformed safetensors header (not a JSON object)")


def test_refuses_to_replace_a_symlink(fixtures_root, tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    out = tmp_path / "o.gguf"
    out.symlink_to(target)
    r = cli("pack", fixtures_root / "bitnet-b1.58-2B-4T", "-o", out, "--force")
    assert r.exit_code == 1
    assert r.stderr == f"Error: {out}: not a regular file; refusing to replace it\n"
    assert target.read_bytes() == b"keep" and out.is_symlink()


def test_unknown_bpe_pre_tokenizer_is_refused(fixture_copy, tmp_path):
    ck = fixture_copy("Llama3-8B-1.58-100B-tokens")
    tj = json.loads((ck / "tokenizer.json").read_text())
    for t in tj["added_tokens"]:
        t["content"] = t["content"].replace("begin_of_text", "startoftext")
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                           "use_regex": True}  # GPT-2's: llama.cpp would need pre 'gpt-2'
    (ck / "tokenizer.json").write_text(json.dumps(tj))
    out = tmp_path / "o.gguf"
    assert_fails(ck, out, f"{ck}/tokenizer.json: pre_tokenizer ByteLevel is none "
                 "bitconv can name for llama.cpp (it knows llama-bpe, falcon3)")


def test_pack_json(fixtures_root, tmp_path):
    import json
    out = tmp_path / "m.gguf"
    r = cli("pack", fixtures_root / "bitnet-b1.58-2B-4T", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    from bitconv.containers.gguf_reader import read_gguf
    data = sum(t.nbytes for t in read_gguf(out).tensors)  # tensor bytes, without header/padding
    assert json.loads(r.stdout) == {"path": str(out), "format": "i2s", "family": "bitnet-b1.58",
                                    "tensors": 24, "bytes": data}
