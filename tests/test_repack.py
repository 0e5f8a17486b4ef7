"""`bitconv repack`: packed file -> any other format without the source checkpoint.

The reference for every output is what `pack` writes from the fixture checkpoint (itself proven
by `verify` in tests/test_verify.py and the per-format tests): a lossless repack must give those
very bytes, and decode to the codes and multipliers of the file it was made from.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from bitconv.containers.gguf_reader import read_gguf
from bitconv.errors import OutputError, PackError
from bitconv.formats.registry import CODECS
from bitconv.runtime.weights import load_gguf
from bitconv.stages.pack import pack
from bitconv.stages.repack import repack
from bitconv.synth.checkpoints import FIXTURES, Shape, make_fixture
from bitconv.types import TernaryTensor
from tests.support.cli import cli

FAMILIES = sorted(FIXTURES)
# ternary fixtures: formats that hold a 0 code (q1_0 is binary only: tests/test_q1_0.py)
LOSSLESS = sorted(n for n, c in CODECS.items()
                  if c.spec.lossless and 0 in c.spec.codes)
SIDECAR = ".kernel_config.ini"


def decoded(path):
    w = load_gguf(path)
    return {n: w.tensors[n] for n in w.order}


def same_tensors(a, b):
    assert list(a) == list(b)
    for name, x in a.items():
        y = b[name]
        if isinstance(x, TernaryTensor):
            np.testing.assert_array_equal(x.codes, y.codes, err_msg=name)
            assert x.multiplier == y.multiplier, name
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def multipliers(path):
    w = load_gguf(path)
    return [(n, w.tensors[n].multiplier) for n in w.order
            if isinstance(w.tensors[n], TernaryTensor)]


# --- the round trip: i2s -> tq2_0 -> hf -> i2s, byte for byte ---

@pytest.mark.parametrize("name, start", [(n, "i2s") for n in FAMILIES]
                         + [("Llama3-8B-1.58-100B-tokens", "tl2")])  # with its sidecar
def test_round_trip_through_tq2_0_and_hf_is_byte_identical(name, start, packed, tmp_path):
    src = packed(name, start)
    tq = repack(src, format="tq2_0", out=tmp_path / "m-tq2_0.gguf")
    # general.name of a checkpoint is its directory's name: name the hf directory like the model
    (tmp_path / "hf").mkdir()
    hf = repack(tq.path, format="hf", out=tmp_path / "hf" / name)
    assert hf.changed == ()
    back = repack(hf.path, format=start, out=tmp_path / "back.gguf")
    assert back.path.read_bytes() == src.read_bytes()
    if start == "tl2":
        assert back.sidecar.read_bytes() == (src.parent / (src.name + SIDECAR)).read_bytes()
    assert (tq.source_format, hf.source_format, back.source_format) == (start, "tq2_0",
                                                                        "checkpoint")


# --- every lossless GGUF -> GGUF pair ---

# the -bf16 fixture's files are the packed 2B4T's but for general.name (same codes and scales)
@pytest.mark.parametrize("name", [n for n in FAMILIES if not n.endswith("-bf16")])
@pytest.mark.parametrize("src_fmt", LOSSLESS)
def test_every_lossless_pair_keeps_codes_and_multipliers(name, src_fmt, packed, tmp_path):
    src = packed(name, src_fmt)
    src_tensors = decoded(src)
    for fmt in LOSSLESS:
        out = repack(src, format=fmt, out=tmp_path / f"{fmt}.gguf")
        assert (out.max_error, out.worst, out.format) == (0.0, None, fmt)
        # the very file (and TL kernel configuration) pack writes from the checkpoint ...
        ref = packed(name, fmt)
        ref_tensors = decoded(ref)
        assert out.path.read_bytes() == ref.read_bytes(), (src_fmt, fmt)
        same_tensors(ref_tensors, src_tensors)  # ... so it decodes to the source's values
        if fmt.startswith("tl"):
            assert out.sidecar.read_bytes() == (ref.parent / (ref.name + SIDECAR)).read_bytes()
        else:
            assert out.sidecar is None and not (tmp_path / f"{fmt}.gguf{SIDECAR}").exists()


@pytest.mark.parametrize("name", FAMILIES)
def test_verify_passes_on_repacked_files(name, fixtures_root, packed, tmp_path):
    # every pair's output is one of these files, byte for byte (test above): verify each
    for i, fmt in enumerate(LOSSLESS):
        src = packed(name, LOSSLESS[(i + 1) % len(LOSSLESS)])
        out = tmp_path / f"{fmt}.gguf"
        assert cli("repack", src, "--format", fmt, "-o", out, "-q").exit_code == 0
        r = cli("verify", out, "--source", fixtures_root / name, "--no-drift", "--tokens", "2")
        assert r.exit_code == 0, (fmt, r.stdout, r.stderr)
        assert [line.split()[1] for line in r.stdout.splitlines()] == [
            "container", "metadata", "tensors", "logits"]


def test_a_lossy_source_repacks_to_what_it_holds(packed, tmp_path):
    # tq2_0-fp16 -> tq1_0: the rounded multipliers are the file's values now, kept exactly
    src = packed("bitnet_b1_58-large", "i2s")
    lossy = repack(src, format="tq2_0-fp16", out=tmp_path / "a.gguf", allow_lossy=True).path
    out = repack(lossy, format="tq1_0", out=tmp_path / "b.gguf")
    assert out.source_format == "tq2_0-fp16" and out.max_error == 0.0
    same_tensors(decoded(out.path), decoded(lossy))


def test_layout_key_is_set_and_removed(packed, tmp_path):
    src = packed("bitnet-b1.58-2B-4T", "i2s")
    arm = repack(src, format="i2s-arm", out=tmp_path / "arm.gguf").path
    kvs = read_gguf(arm).kvs
    assert kvs["bitnet-b1.58.tensor_data_layout"] == "i2s-arm"
    assert list(kvs).index("bitnet-b1.58.tensor_data_layout") + 1 == list(kvs).index(
        "tokenizer.ggml.model")
    back = repack(arm, format="i2s", out=tmp_path / "back.gguf").path
    assert back.read_bytes() == src.read_bytes()


# --- lossy targets ---

def test_lossy_target_refused_without_allow_lossy(packed, tmp_path):
    src = packed("bitnet_b1_58-large", "i2s")
    name, m = multipliers(src)[0]
    d = float(np.float32(np.float16(m)))
    assert d != m  # the premise: this multiplier has no exact fp16
    out = tmp_path / "m.gguf"
    r = cli("repack", src, "--format", "tq2_0-fp16", "-o", out)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == (f"Error: {name}: multiplier {float(m)!r} is not exact in tq2_0-fp16, "
                        f"whose fp16 d would be {d!r}; pass --allow-lossy to round it, or use "
                        "--format tq2_0\n")
    assert list(tmp_path.iterdir()) == []


def test_lossy_target_with_allow_lossy_reports_the_loss(fixtures_root, packed, tmp_path):
    name = "bitnet_b1_58-large"
    src = packed(name, "tq1_0")
    ms = multipliers(src)
    rel = {n: abs(float(np.float32(np.float16(m))) - float(m)) / float(m) for n, m in ms}
    worst = max(rel, key=rel.get)
    out = tmp_path / "m.gguf"
    r = cli("repack", src, "--format", "tq2_0-fp16", "-o", out, "--allow-lossy", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["lossless"], d["worst"], d["max_error"]) == (False, worst, rel[worst])
    assert r.stderr == (f"note: tq2_0-fp16 rounded multipliers: max relative weight error "
                        f"{rel[worst]:.3g} in {worst}\n")
    for n, m in multipliers(out):  # every block scale is fp16(m)
        assert m == np.float32(np.float16(dict(ms)[n]))
    v = cli("verify", out, "--source", fixtures_root / name, "--no-drift", "--json")
    assert v.exit_code == 0, v.stdout
    loss = next(f for f in json.loads(v.stdout)["findings"] if f["check"] == "loss")
    assert loss["class"] == "info loss" and loss["subject"] == worst
    assert f"max weight error {rel[worst]:.3g} relative, in {worst}" in loss["message"]


def test_lossy_target_accepted_when_every_multiplier_is_exact_in_fp16(packed, tmp_path):
    # 2B4T's weight_scales are 1, 1.25, ..., 2: all exact in fp16
    src = packed("bitnet-b1.58-2B-4T", "i2s")
    assert all(np.float32(np.float16(m)) == m for _, m in multipliers(src))
    res = repack(src, format="tq1_0-fp16", out=tmp_path / "m.gguf")
    assert res.max_error == 0.0
    assert multipliers(res.path) == multipliers(src)


def test_a_directory_source_is_checked_for_loss_too(fixtures_root, tmp_path):
    with pytest.raises(PackError, match=r"pass --allow-lossy"):
        repack(fixtures_root / "Llama3-8B-1.58-100B-tokens", format="tq2_0-fp16",
               out=tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


# --- refusals: existing output, bad shape, bad input ---

@pytest.mark.parametrize("fmt, out_name", [("tq2_0", "m.gguf"), ("hf", "m-hf")])
def test_existing_output_is_kept_without_force(fmt, out_name, packed, tmp_path):
    src = packed("bitnet-b1.58-2B-4T", "i2s")
    out = tmp_path / out_name
    repack(src, format=fmt, out=out)
    before = sorted(p.name for p in tmp_path.iterdir())
    marker = (out / "config.json") if out.is_dir() else out
    marker.write_bytes(b"keep")
    r = cli("repack", src, "--format", fmt, "-o", out)
    assert r.exit_code == 1
    assert r.stderr == f"Error: {out}: already exists; pass --force to overwrite\n"
    assert marker.read_bytes() == b"keep"
    assert cli("repack", src, "--format", fmt, "-o", out, "--force").exit_code == 0
    assert marker.read_bytes() != b"keep" and sorted(p.name for p in tmp_path.iterdir()) == before


def test_output_is_never_the_input(packed, tmp_path):
    src = tmp_path / "m.gguf"
    src.write_bytes(packed("bitnet-b1.58-2B-4T", "i2s").read_bytes())
    with pytest.raises(OutputError) as e:
        repack(src, format="tq2_0", out=src, force=True)
    assert str(e.value) == f"{src}: is the input; choose another output"


def test_shape_the_target_cannot_hold_is_refused_before_writing(tmp_path):
    # hidden 128: every q/k/v/gate/up weight has 128 inputs, which I2_S holds and TQ does not
    ck = make_fixture("bitnet-b1.58-2B-4T", tmp_path / "small", Shape(hidden=128, inter=256))
    src = pack(ck, format="i2s", out=tmp_path / "small-i2s.gguf").path
    out = tmp_path / "o" / "m.gguf"
    out.parent.mkdir()
    r = cli("repack", src, "--format", "tq2_0", "-o", out)
    assert r.exit_code == 1
    assert r.stderr == ("Error: blk.0.attn_q.weight: tq2_0 needs in_features % 256 == 0, "
                        "got 128\n")
    assert list(out.parent.iterdir()) == []


def test_truncated_input_is_one_line(packed, tmp_path):
    src = packed("bitnet-b1.58-2B-4T", "i2s")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    out = tmp_path / "o.gguf"
    r = cli("repack", cut, "--format", "tq2_0", "-o", out)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith(f"Error: {cut}: truncated: tensor ") and r.stderr.count("\n") == 1
    assert not out.exists() and not (tmp_path / "o.gguf.incomplete").exists()


@pytest.mark.parametrize("fmt, out_name", [("i2s", "o.gguf"), ("hf", "o-hf")])
def test_corrupt_tensor_data_is_one_line(fmt, out_name, packed, tmp_path):
    src = tmp_path / "bad.gguf"
    src.write_bytes(packed("bitnet-b1.58-2B-4T", "tq2_0").read_bytes())
    t = next(t for t in read_gguf(src).tensors if t.name == "blk.1.attn_v.weight")
    with open(src, "r+b") as f:  # byte 5 of the first block's qs: all four codes become 3
        f.seek(t.offset + 5)
        f.write(b"\xff")
    r = cli("repack", src, "--format", fmt, "-o", tmp_path / out_name)
    assert r.exit_code == 1
    assert r.stderr == (f"Error: {src}: blk.1.attn_v.weight: tq2_0 data holds code 3 (not a "
                        "ternary value) at element 5\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOPE" + bytes(64))
    r = cli("repack", p, "--format", "i2s", "-o", tmp_path / "o.gguf")
    assert (r.exit_code, r.stderr) == (1, f"Error: {p}: not a GGUF file (bad magic)\n")


# --- the CLI surface ---

def test_cli_prints_only_the_path_and_defaults_to_the_model_name(packed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = packed("Llama3-8B-1.58-100B-tokens", "i2s")
    r = cli("repack", src, "--format", "tl1")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "Llama3-8B-1.58-100B-tokens-tl1.gguf\n" and r.stderr == ""
    assert (tmp_path / f"Llama3-8B-1.58-100B-tokens-tl1.gguf{SIDECAR}").is_file()
    r = cli("repack", src, "--format", "hf")
    assert r.stdout == "Llama3-8B-1.58-100B-tokens-hf\n"
    assert (tmp_path / "Llama3-8B-1.58-100B-tokens-hf" / "config.json").is_file()


def test_format_is_required():
    assert cli("repack", "x.gguf").exit_code == 2


def test_help_says_what_is_lossless():
    r = cli("repack", "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert "--allow-lossy" in text and "tq1_0-fp16, tq2_0-fp16 and q2_0-fp16" in text
    assert "keeps each float32 multiplier exactly" in text


# --- the hf directory: transformers' tokenizer as the peer ---

@pytest.mark.parametrize("name", ["bitnet_b1_58-large", "bitnet-b1.58-2B-4T"])
def test_rebuilt_tokenizer_tokenizes_like_the_original(name, fixtures_root, packed, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = repack(packed(name, "i2s"), format="hf", out=tmp_path / name).path
    ours = transformers.AutoTokenizer.from_pretrained(out)
    theirs = transformers.AutoTokenizer.from_pretrained(fixtures_root / name)
    for text in ["Hello world, how are you?", "  two  spaces</s> and <s>", "ünïcode ✓ 1234",
                 "<|begin_of_text|>Hi<|eot_id|>"]:
        ids = theirs(text)["input_ids"]
        assert ours(text)["input_ids"] == ids, text
        assert ours.decode(ids) == theirs.decode(ids), text
    if theirs.chat_template:
        msgs = [{"role": "user", "content": "Hi"}]
        assert (ours.apply_chat_template(msgs, add_generation_prompt=True)
                == theirs.apply_chat_template(msgs, add_generation_prompt=True))
