"""`bitconv verify` judges GGUF files that other tools wrote (issue 13, scope 3).

(a) llama.cpp's own converter, convert_hf_to_gguf.py from the llama-cpp-python==0.3.36 sdist
    (the tree bench/bench_pack.py runs; downloaded once from PyPI into build/bench/peers),
    `--outtype tq2_0` / `tq1_0`, on the 1bitLLM fixture: exit 0 with info lines. It is the only
    fixture that converter takes: on the Llama3 fixture (packed uint8 + weight_scale) it crashes
    in lazy mode ("Tensor on device cpu is not on the expected device meta!") and with --no-lazy
    its pre-tokenizer hash check refuses the tiny BPE vocabulary; 2B4T it cannot convert at all
    (DESIGN.md §5b).
(b) Files in bitnet.cpp's conventions, written here from our own I2_S output: multiplier
    fl(1/fl(1/mean)) as bitnet.cpp 1.0's weight_quant leaves it, non-zero I2_S tail bytes,
    alphabetical tensor order, no general.quantization_version, no add_bos_token, the `[PAD1]`
    placeholder its SentencePiece padding writes: exit 0 with info lines.
(c) Deliberately wrong files: exit 3 naming the tensor or key; --json lists every finding.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bitconv.containers.gguf_reader import kv_records, read_gguf, tensor_bytes
from bitconv.containers.gguf_writer import _encode_kv
from bitconv.types import KV
from tests.support.cli import cli

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "build" / "bench" / "peers"   # shared with bench/bench_pack.py
SDIST = "llama-cpp-python==0.3.36"


def findings(path, src, *extra):
    r = cli("verify", path, "--source", src, "--json", *extra)
    return r, json.loads(r.stdout)["findings"]


def classes(found) -> set[tuple[str, str, str | None]]:
    return {(f["class"], f["check"], f["subject"]) for f in found if f["class"] != "ok"}


# --- a GGUF rewriter (gguf-py's reader and writer cannot handle type 36) ---

def rewrite(src: Path, dst: Path, *, kvs=None, tensors=None, order=None, data_order=None):
    """Copy `src` to `dst` through these edits: kvs(list[KV]) -> list[KV]; tensors(name, bytes)
    -> bytes; `order` the tensor infos' order, `data_order` the data's (default: info order)."""
    gf = read_gguf(src)
    records = kvs(kv_records(gf)) if kvs else kv_records(gf)
    info = {t.name: t for t in gf.tensors}
    data = {n: bytes(tensor_bytes(gf, t)) for n, t in info.items()}
    if tensors:
        data = {n: tensors(n, b) for n, b in data.items()}
    names = order or [t.name for t in gf.tensors]
    offsets, pos = {}, 0
    for n in data_order or names:
        offsets[n], pos = pos, pos + len(data[n]) + (-len(data[n]) % gf.alignment)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(names), len(records))
    head += b"".join(_encode_kv(kv) for kv in records)
    for n in names:
        t = info[n]
        head += struct.pack("<Q", len(n.encode())) + n.encode() + struct.pack("<I", len(t.shape))
        head += b"".join(struct.pack("<Q", d) for d in reversed(t.shape))
        head += struct.pack("<IQ", t.ggml_type, offsets[n])
    out = bytearray(head + bytes(-len(head) % gf.alignment))
    for n in data_order or names:
        out += data[n] + bytes(-len(data[n]) % gf.alignment)
    dst.write_bytes(bytes(out))
    return dst


def drop(*keys):
    return lambda records: [kv for kv in records if kv.key not in keys]


def set_kv(key, value):
    return lambda records: [KV(kv.key, kv.vtype, value, kv.subtype) if kv.key == key else kv
                            for kv in records]


def multiplier_of(path, name) -> np.float32:
    gf = read_gguf(path)
    raw = bytes(tensor_bytes(gf, next(t for t in gf.tensors if t.name == name)))
    return np.frombuffer(raw[-32:-28], "<f4")[0]


# --- (a) llama.cpp's converter ---

@pytest.fixture(scope="session")
def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py and its gguf-py, from the pinned sdist."""
    pytest.importorskip("torch", reason="convert_hf_to_gguf.py needs torch (make test-deps)")
    pytest.importorskip("sentencepiece", reason="convert_hf_to_gguf.py needs sentencepiece")
    tree = PEERS / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        PEERS.mkdir(parents=True, exist_ok=True)
        p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--no-binary", ":all:", SDIST, "-d", str(PEERS)], capture_output=True,
                           check=False)
        tars = sorted(PEERS.glob("llama_cpp_python-0.3.36.tar.gz"))
        if not tars:
            pytest.skip(f"llama.cpp's converter cannot be obtained: pip download {SDIST} "
                        f"failed ({p.stderr.decode(errors='replace').strip()[-200:]})")
        with tarfile.open(tars[-1]) as tf:
            prefix = tf.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
            members = [m for m in tf.getmembers() if m.name.startswith(prefix) and
                       m.name[len(prefix):].split("/")[0] in
                       ("convert_hf_to_gguf.py", "conversion", "gguf-py")]
            for m in members:
                m.name = m.name[len(prefix):]
            tf.extractall(tree, members=members, filter="data")
    return tree


def convert(converter: Path, src: Path, outtype: str, out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py")}
    p = subprocess.run([sys.executable, str(converter / "convert_hf_to_gguf.py"), str(src),
                        "--outtype", outtype, "--outfile", str(out)],
                       capture_output=True, env=env, text=True, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


# What llama.cpp's converter writes differently from bitconv for 1bitLLM, all computing the same.
LLAMA_CPP_INFO = {
    ("info", "metadata", "general.name"),          # 'Bitnet_B1_58 Large', from the directory
    ("info", "metadata", "general.basename"), ("info", "metadata", "general.size_label"),
    ("info", "metadata", "general.type"),
    ("info", "metadata", "bitnet.vocab_size"),     # missing: the runtime counts the tokens
    ("info", "metadata", "bitnet.rope.dimension_count"),   # missing: = key_length
    ("info", "metadata", "bitnet.attention.key_length"),   # extra: = n_embd / n_head
    ("info", "metadata", "bitnet.attention.value_length"),
    ("info", "metadata", "tokenizer.ggml.unknown_token_id"),  # missing: SPM's default is 0
    ("info", "metadata", "tokenizer.ggml.tokens"),  # <unk>/<s>/</s>: CONTROL, score -1000
    ("info", "metadata", None),                     # key order
    ("info", "tensors", None),                      # tensor order
}


@pytest.mark.parametrize("outtype", ["tq2_0", "tq1_0"])
def test_llama_cpp_converter_files_verify_with_info_lines(outtype, converter, fixtures_root,
                                                          tmp_path):
    src = fixtures_root / "bitnet_b1_58-large"
    out = convert(converter, src, outtype, tmp_path / f"{outtype}.gguf")
    r, found = findings(out, src, "--no-drift")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stderr == ""
    worst = next(f for f in found if f["check"] == "loss")
    assert classes(found) == LLAMA_CPP_INFO | {("info loss", "loss", worst["subject"])}
    assert worst["message"].startswith(f"{outtype}-fp16 is lossy (fp16 block scale)")
    assert 0 < worst["numbers"]["max_rel"] <= 2.0 ** -11 + 2.0 ** -23  # fp16 rounding + 1 ulp
    # its d = fp16(fl(1/fl(1/mean))) equals bitconv's fp16(mean) here: logits bit-identical
    assert [f["class"] for f in found if f["check"] == "logits"] == ["ok"]
    text = cli("verify", out, "--source", src, "--no-drift").stdout.splitlines()
    assert "info  metadata   general.name is 'Bitnet_B1_58 Large', the source gives " \
           "'bitnet_b1_58-large' (descriptive)" in text
    assert not any(line.startswith("FAIL") for line in text)


# --- (b) bitnet.cpp's conventions ---

def bitnet_cpp_style(src: Path, dst: Path, *, data_order: bool = False) -> Path:
    """Our I2_S file as bitnet.cpp writes one: multipliers fl(1/fl(1/m)), the tail's 28 spare
    bytes non-zero, tensors sorted by name, no quantization_version / add_bos_token, and the
    `[PAD{i}]` names of its SentencePiece padding counted from 1. With data_order, the tensor
    data stays in the original order behind the sorted infos."""
    gf = read_gguf(src)

    def tail(n, b):
        t = next(t for t in gf.tensors if t.name == n)
        if t.ggml_type != 36:
            return b
        at = len(b) - 32
        m = np.frombuffer(b[at:at + 4], "<f4")[0]
        m = np.float32(1) / (np.float32(1) / m)       # weight_quant: s = 1/mean; stored 1/s
        return b[:at] + np.float32(m).tobytes() + bytes(range(1, 29))

    def vocab(records):
        records = drop("general.quantization_version", "tokenizer.ggml.add_bos_token")(records)
        out = []
        for kv in records:
            if kv.key == "tokenizer.ggml.tokens":
                pads = [i for i, t in enumerate(kv.value) if t.startswith("[PAD")]
                names = list(kv.value)
                for j, i in enumerate(pads, 1):
                    names[i] = f"[PAD{j}]"
                kv = KV(kv.key, kv.vtype, names, kv.subtype)
            out.append(kv)
        return out

    names = sorted(t.name for t in gf.tensors)
    return rewrite(src, dst, kvs=vocab, tensors=tail, order=names,
                   data_order=[t.name for t in gf.tensors] if data_order else None)


@pytest.mark.parametrize("data_order", [False, True], ids=["sorted", "data-out-of-info-order"])
def test_bitnet_cpp_style_1bitllm_verifies_with_info_lines(data_order, fixtures_root, tmp_path,
                                                           packed):
    src = fixtures_root / "bitnet_b1_58-large"
    ours = packed("bitnet_b1_58-large", "i2s")
    out = bitnet_cpp_style(ours, tmp_path / "b.gguf", data_order=data_order)
    assert read_gguf(out).kvs["tokenizer.ggml.tokens"][511] == "[PAD1]"
    r, found = findings(out, src, "--no-drift")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert classes(found) == {
        ("info", "metadata", "general.quantization_version"),
        ("info", "metadata", "tokenizer.ggml.add_bos_token"),  # SPM default: add BOS, as here
        ("info", "metadata", "tokenizer.ggml.tokens"),         # [PAD1] for [PAD511]
        ("info", "tensors", None),                             # alphabetical order
    }  # 1bitLLM's fixture multipliers all survive fl(1/fl(1/m)): no ulp line
    tok = next(f for f in found if f["subject"] == "tokenizer.ggml.tokens")
    assert tok["numbers"]["ids"] == [511] and "'[PAD1]', the source gives '[PAD511]'" in \
        tok["message"]
    assert [f["class"] for f in found if f["check"] == "logits"] == ["ok"]


def test_bitnet_cpp_style_2b4t_bf16_one_ulp_multipliers_are_info(fixtures_root, tmp_path, packed):
    src = fixtures_root / "bitnet-b1.58-2B-4T-bf16"
    ours = packed("bitnet-b1.58-2B-4T-bf16", "i2s")
    out = bitnet_cpp_style(ours, tmp_path / "b.gguf")
    r, found = findings(out, src, "--no-drift")
    assert r.exit_code == 0, r.stdout + r.stderr
    ulp = next(f for f in found if f["check"] == "tensors" and f["class"] == "info"
               and f["subject"])
    changed = [n for n in ulp["numbers"]["tensors"]
               if multiplier_of(out, n) != multiplier_of(ours, n)]
    assert len(ulp["numbers"]["tensors"]) == len(changed) == 6  # of 14, measured
    for n in changed:
        a, b = multiplier_of(out, n), multiplier_of(ours, n)
        assert abs(float(a) - float(b)) == float(np.spacing(b))
    logits = next(f for f in found if f["check"] == "logits")
    assert logits["class"] in ("ok", "info"), logits  # info: differs, and says by how much
    if logits["class"] == "info":
        assert logits["numbers"]["max_rel"] < 0.05


# --- (c) deliberately wrong files ---

@pytest.fixture
def ours(fixtures_root, packed):
    src = fixtures_root / "bitnet_b1_58-large"
    return packed("bitnet_b1_58-large", "i2s"), src


def with_multiplier(fn):
    def edit(n, b):
        if n != "blk.0.attn_q.weight":
            return b
        m = np.frombuffer(b[-32:-28], "<f4")[0]
        return b[:-32] + np.float32(fn(m)).tobytes() + b[-28:]
    return edit


@pytest.mark.parametrize("fn, words", [(lambda m: np.float32(1) / m, "the reciprocal of"),
                                       (lambda m: m * m, "the square of")])
def test_a_multiplier_off_by_a_convention_fails_naming_tensor_and_ratio(fn, words, ours,
                                                                        tmp_path):
    path, src = ours
    m = multiplier_of(path, "blk.0.attn_q.weight")
    out = rewrite(path, tmp_path / "bad.gguf", tensors=with_multiplier(fn))
    r = cli("verify", out, "--source", src, "--no-drift")
    assert r.exit_code == 3
    ratio = float(np.float32(fn(m))) / float(m)
    assert r.stderr == (f"Error: {out}: tensors: blk.0.attn_q.weight: multiplier "
                        f"{float(np.float32(fn(m)))!r} is {words} the source's {float(m)!r} "
                        f"(ratio {ratio:.6g})\n")
    assert "FAIL  logits" in r.stdout


def test_one_flipped_code_fails_naming_the_tensor(ours, tmp_path):
    path, src = ours

    def flip(n, b):  # byte 0 of block 0 holds elements 0, 32, 64, 96 at shifts 6, 4, 2, 0
        if n != "blk.1.ffn_up.weight":
            return b
        code = b[0] >> 6
        return bytes([((code + 1) % 3) << 6 | (b[0] & 0x3F)]) + b[1:]
    out = rewrite(path, tmp_path / "bad.gguf", tensors=flip)
    r, found = findings(out, src, "--no-drift")
    assert r.exit_code == 3
    bad = [f for f in found if f["class"] == "FAIL"]
    assert [(f["check"], f["subject"]) for f in bad] == [
        ("tensors", "blk.1.ffn_up.weight"), ("logits", None)]
    assert bad[0]["numbers"] == {"count": 1, "first": [0, 0]}


def test_a_changed_head_count_fails_naming_the_key_and_json_lists_every_check(ours, tmp_path):
    path, src = ours
    out = rewrite(path, tmp_path / "bad.gguf", kvs=set_kv("bitnet.attention.head_count", 8))
    r, found = findings(out, src)
    assert r.exit_code == 3
    assert r.stderr == (f"Error: {out}: metadata: bitnet.attention.head_count is 8, the source "
                        "gives 4\n")
    assert [f["check"] for f in found if f["class"] == "ok"] == ["container", "metadata",
                                                                  "tensors"]
    assert {f["check"] for f in found} == {"container", "metadata", "tensors", "logits", "drift"}
    assert [(f["class"], f["subject"]) for f in found if f["check"] == "metadata"][1:] == [
        ("FAIL", "bitnet.attention.head_count")]
    for f in found:
        assert set(f) == {"class", "check", "subject", "message", "numbers"}


def test_a_missing_add_bos_whose_default_differs_fails(ours, tmp_path):
    # an SPM vocabulary that must not add BOS: without the key llama.cpp adds one
    path, _ = ours
    no_bos = rewrite(path, tmp_path / "src.gguf", kvs=set_kv("tokenizer.ggml.add_bos_token", False))
    from bitconv.stages.audit import audit_metadata
    got = read_gguf(rewrite(path, tmp_path / "f.gguf",
                            kvs=drop("tokenizer.ggml.add_bos_token"))).kvs
    found = audit_metadata(got, read_gguf(no_bos).kvs)
    assert [(f.cls, f.subject, f.message) for f in found[1:]] == [
        ("FAIL", "tokenizer.ggml.add_bos_token", ("tokenizer.ggml.add_bos_token is missing, "
                                                  "the source gives False (the runtime's default "
                                                  "is True)"))]


# --- the metadata rules one by one (bitconv/stages/audit.py), on small hand-made headers ---

SPM = {"general.architecture": "bitnet", "general.name": "m", "bitnet.embedding_length": 256,
       "bitnet.attention.head_count": 4, "tokenizer.ggml.model": "llama",
       "tokenizer.ggml.pre": "default",
       "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a", "b", "ab", "[PAD6]"],
       "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -1000.0],
       "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 5], "tokenizer.ggml.bos_token_id": 1}


def tokens_with(i, text=None, score=None, kind=None):
    kv = {**SPM}
    for key, v in (("tokenizer.ggml.tokens", text), ("tokenizer.ggml.scores", score),
                   ("tokenizer.ggml.token_type", kind)):
        if v is not None:
            kv[key] = [*kv[key][:i], v, *kv[key][i + 1:]]
    return kv


@pytest.mark.parametrize("got, cls", [
    ({**SPM, "general.name": "B158 Large Like"}, "info"),
    ({**SPM, "general.name": "Phi3 mini"}, "FAIL"),   # llama.cpp sets token attributes by name
    ({**SPM, "general.quantization_version": 2}, "info"),
    ({**SPM, "tokenizer.ggml.pre": "llama-bpe"}, "info"),   # SPM never reads a pre name
    ({**SPM, "tokenizer.ggml.pre": "jina-v2-de"}, "FAIL"),  # ... except these
    ({**SPM, "bitnet.rope.freq_base": 10000.0}, "info"),    # the loader's default
    ({**SPM, "bitnet.rope.freq_base": 500000.0}, "FAIL"),
    ({**SPM, "bitnet.attention.key_length": 64}, "info"),   # = 256 / 4
    ({**SPM, "bitnet.attention.key_length": 32}, "FAIL"),
    ({**SPM, "bitnet.rope.scaling.type": "linear", "bitnet.rope.scaling.factor": 1.0}, "info"),
    ({**SPM, "bitnet.rope.scaling.type": "linear", "bitnet.rope.scaling.factor": 2.0}, "FAIL"),
    ({**SPM, "tokenizer.ggml.add_bos_token": True}, "info"),
    ({**SPM, "tokenizer.ggml.add_eos_token": True}, "FAIL"),
    ({**SPM, "tokenizer.chat_template": "{{ x }}"}, "FAIL"),
    (tokens_with(6, text="[PAD1]"), "info"),                # an unreachable placeholder
    (tokens_with(6, text="ab"), "FAIL"),                    # reachable (and a duplicate)
    (tokens_with(6, text="<pad>"), "FAIL"),                 # llama.cpp matches <...> by text
    (tokens_with(6, kind=1), "FAIL"),                       # no longer UNUSED
    (tokens_with(0, kind=3, score=-1000.0), "info"),        # <unk> CONTROL: as llama.cpp writes
    (tokens_with(5, score=-9.0), "FAIL"),                   # 'ab' = 'a' + 'b': its score ranks
    (tokens_with(3, text="c"), "FAIL"),
], ids=["name", "name-phi3", "quantization-version", "spm-pre", "spm-pre-jina",
        "freq-base-default", "freq-base", "key-length-default", "key-length", "rope-linear-1",
        "rope-linear-2", "add-bos-default", "add-eos", "chat-template", "placeholder",
        "reachable-text", "angle-text", "not-unused", "unk-control", "merge-score",
        "normal-text"])
def test_each_metadata_rule(got, cls):
    from bitconv.stages.audit import audit_metadata
    found = audit_metadata(got, SPM)
    assert found[0].cls == "ok"
    assert found[1:] and {f.cls for f in found[1:]} == {cls}, [f.message for f in found]


@pytest.mark.parametrize("heads, says", [
    (8, ("blk.0.attn_q.weight is (256, 256), but bitnet.attention.head_count 8, head_count_kv 4 "
         "and head dim 64 make it (512, 256)")),
    (3, ("bitnet.attention.head_count 3 and head_count_kv 4 with head dim 64: not a "
         "grouped-query attention bitconv runs"))])
def test_run_and_logits_refuse_head_counts_the_shapes_deny(heads, says, ours, tmp_path):
    """The hyperparameters are checked against the tensor shapes before anything is read: one
    line, exit 1 (was a numpy reshape traceback mid-forward)."""
    path, _ = ours
    out = rewrite(path, tmp_path / "bad.gguf", kvs=set_kv("bitnet.attention.head_count", heads))
    for args in (["run", out, "-p", "To be", "-n", "2"],
                 ["logits", out, "--tokens", "1,2", "-o", tmp_path / "x.npy"]):
        r = cli(*args)
        assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: {says}\n"), args
    assert not (tmp_path / "x.npy").exists()
