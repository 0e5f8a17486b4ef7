"""`bitconv verify`: exit 0 on every family, exit 3 naming the problem on each corruption."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from bitconv.containers.gguf_reader import read_gguf
from tests.support.cli import cli
from tests.support.files import patch_bytes

FAMILIES = ["bitnet_b1_58-large", "bitnet-b1.58-2B-4T", "bitnet-b1.58-2B-4T-bf16",
            "Llama3-8B-1.58-100B-tokens"]


@pytest.mark.parametrize("name", FAMILIES)
def test_verify_passes_on_every_family(name, fixtures_root, packed):
    out = packed(name, "i2s")
    r = cli("verify", out, "--source", fixtures_root / name)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stderr == ""
    assert [line.split()[:2] for line in r.stdout.splitlines()] == [
        ["ok", "container"], ["ok", "metadata"], ["ok", "tensors"], ["ok", "logits"],
        ["info", "drift"]]


def test_verify_json(fixtures_root, packed):
    import json
    name = "bitnet-b1.58-2B-4T"
    out = packed(name, "i2s")
    r = cli("verify", out, "--source", fixtures_root / name, "--json")
    d = json.loads(r.stdout)
    assert d["ok"] is True and [(f["class"], f["check"]) for f in d["findings"]] == [
        ("ok", "container"), ("ok", "metadata"), ("ok", "tensors"), ("ok", "logits"),
        ("info", "drift")]


def test_a_packed_file_from_another_source_fails(fixtures_root, packed):
    out = packed("bitnet-b1.58-2B-4T", "i2s")
    r = cli("verify", out, "--source", fixtures_root / "Llama3-8B-1.58-100B-tokens")
    assert r.exit_code == 3
    assert r.stderr.startswith(f"Error: {out}: metadata: general.architecture is 'bitnet-b1.58', "
                               "the source gives 'llama'")


@pytest.fixture
def packed_copy(fixtures_root, packed, tmp_path):
    """A private copy of the packed 2B4T file, to damage: (path, source, {name: tensor info})."""
    name = "bitnet-b1.58-2B-4T"
    out = Path(shutil.copy(packed(name, "i2s"), tmp_path / "m.gguf"))
    return out, fixtures_root / name, {t.name: t for t in read_gguf(out).tensors}


def test_one_flipped_code(packed_copy):
    out, src, t = packed_copy
    ffn = t["blk.1.ffn_down.weight"]
    byte = out.read_bytes()[ffn.offset + 1000]
    # element 1000 % 32 + 32*g of block 1000 // 32 ... just move the top code (bits 7-6) by one step
    top = byte >> 6
    patch_bytes(out, ffn.offset + 1000, bytes([((top + 1) % 3) << 6 | (byte & 0x3F)]))
    r = cli("verify", out, "--source", src)
    assert r.exit_code == 3
    # byte 1000 = block 31, byte 8 -> element 31*128 + 8 = 3976 of the flat (256, 512) tensor
    assert r.stderr.startswith(f"Error: {out}: tensors: blk.1.ffn_down.weight: 1 values differ, "
                               "first at [7, 392]")
    assert "FAIL  tensors" in r.stdout and "FAIL  logits" in r.stdout  # every check runs


def test_changed_scale(packed_copy):
    out, src, t = packed_copy
    q = t["blk.0.attn_q.weight"]
    n = q.shape[0] * q.shape[1]
    old = struct.unpack("<f", out.read_bytes()[q.offset + n // 4: q.offset + n // 4 + 4])[0]
    patch_bytes(out, q.offset + n // 4, struct.pack("<f", old * 1.0001))
    r = cli("verify", out, "--source", src)
    assert r.exit_code == 3
    assert r.stderr.startswith(f"Error: {out}: tensors: blk.0.attn_q.weight: multiplier ")


def test_two_swapped_tensors(packed_copy):
    out, src, t = packed_copy
    a, b = t["blk.0.attn_q.weight"], t["blk.0.attn_output.weight"]
    assert a.nbytes == b.nbytes
    raw = out.read_bytes()
    da, db = raw[a.offset:a.offset + a.nbytes], raw[b.offset:b.offset + b.nbytes]
    patch_bytes(out, a.offset, db)
    patch_bytes(out, b.offset, da)
    r = cli("verify", out, "--source", src)
    assert r.exit_code == 3
    assert r.stderr.startswith(f"Error: {out}: tensors: blk.0.attn_q.weight: ")


def test_wrong_head_count(packed_copy):
    out, src, _ = packed_copy
    key = b"bitnet-b1.58.attention.head_count"
    needle = struct.pack("<Q", len(key)) + key + struct.pack("<I", 4)  # u32 value type
    raw = out.read_bytes()
    at = raw.index(needle) + len(needle)
    assert struct.unpack("<I", raw[at:at + 4])[0] == 4
    patch_bytes(out, at, struct.pack("<I", 8))
    r = cli("verify", out, "--source", src)
    assert r.exit_code == 3
    assert r.stderr == (f"Error: {out}: metadata: bitnet-b1.58.attention.head_count is 8, "
                        "the source gives 4\n")


def test_truncated_file(packed_copy):
    out, src, _ = packed_copy
    size = out.stat().st_size
    with open(out, "r+b") as f:
        f.truncate(size - 100)
    r = cli("verify", out, "--source", src)
    assert r.exit_code == 3
    assert r.stderr == (f"Error: {out}: container: {out}: truncated: tensor 'output_norm.weight' "
                        f"ends at byte {size}, file has {size - 100}\n")


def test_without_source_checks_the_container_only(packed_copy):
    out, _, _ = packed_copy
    r = cli("verify", out)
    assert r.exit_code == 0
    assert r.stdout.startswith("ok    container  24 tensors parse and unpack (14 ternary)")


def test_packed_file_runs_like_its_source_incrementally(packed):
    """The KV cache: token-by-token decoding gives the prefill's logits."""
    from bitconv.runtime.model import Cache, Model
    from bitconv.runtime.weights import load_gguf
    out = packed("Llama3-8B-1.58-100B-tokens", "i2s")
    m = Model(load_gguf(out))
    ids = np.array([3, 700, 12, 55, 901])
    full = m.forward(ids)
    c = Cache()
    steps = np.concatenate([m.forward(ids[i:i + 1], c) for i in range(len(ids))])
    np.testing.assert_allclose(steps, full, rtol=0, atol=1e-5 * np.abs(full).max())


def test_logits_command_saves_the_same_logits_from_file_and_source(fixtures_root, tmp_path, packed):
    name = "bitnet_b1_58-large"
    out = packed(name, "i2s")
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for model, dst in ((out, a), (fixtures_root / name, b)):
        r = cli("logits", model, "--tokens", "1,300,7,42", "-o", dst)
        assert r.exit_code == 0, r.stderr
        assert r.stdout == f"{dst}\n"
    la, lb = np.load(a), np.load(b)
    assert la.shape == (4, 512) and la.dtype == np.float32
    assert np.array_equal(la, lb)
    r = cli("logits", out, "--tokens", "1,9999", "-o", tmp_path / "c.npy")
    assert r.exit_code == 1 and r.stderr == "Error: token id out of range 0..511\n"
    assert not (tmp_path / "c.npy").exists()


def test_a_lossy_file_verifies_against_what_its_format_holds_and_says_the_cost(fixtures_root,
                                                                              packed):
    # 1bitLLM's absmean multipliers are arbitrary float32s: an fp16 block scale cannot hold them
    src = fixtures_root / "bitnet_b1_58-large"
    out = packed("bitnet_b1_58-large", "tq2_0-fp16")
    r = cli("verify", out, "--source", src, "--no-drift")
    assert r.exit_code == 0, r.output
    loss = next(line for line in r.stdout.splitlines() if line.startswith("info loss"))
    assert loss.startswith("info loss  loss       tq2_0-fp16 is lossy (fp16 block scale): max "
                           "weight error ")
    assert loss.endswith("; all 14 multipliers within its rounding bound")
    rel = float(loss.split("error ")[1].split()[0])
    assert 0 < rel <= 2.0 ** -11  # fp16 keeps 11 significant bits: round-to-nearest error bound
