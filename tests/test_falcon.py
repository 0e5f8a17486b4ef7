"""Falcon3-*-1.58bit and Falcon-E (issue 13, scope 4): pack, verify, tokenizers, revisions.

Fixture facts and their sources: bitconv/synth/falcon.py. The tokenizer checks compare three
implementations that share no code: transformers (AutoTokenizer on the checkpoint directory),
bitconv's runtime tokenizer rebuilt from the GGUF metadata, and llama.cpp's (when installed).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bitconv.containers.gguf_reader import read_gguf, tensor_bytes
from bitconv.containers.safetensors import to_float32
from bitconv.model.ternary import AbsmeanScan, scan_part
from bitconv.model.tokenizer.from_files import (
    PRE_TOKENIZERS,
    pre_runtimes,
    pre_tokenizer,
)
from bitconv.runtime.text import load_text_codec
from bitconv.runtime.weights import load_gguf
from bitconv.stages.pack import pack
from bitconv.synth.checkpoints import FIXTURES
from bitconv.synth.falcon import FALCON_SPECIALS
from tests.support.cli import cli

MAIN = ["Falcon3-1B-Instruct-1.58bit", "Falcon-E-1B-Instruct"]
REVISIONS = ["Falcon-E-1B-Instruct-prequantized", "Falcon-E-1B-Instruct-bfloat16"]
FORMATS = ["i2s", "tq2_0"]
PROMPTS = [
    "Hello world, how are you?",
    "<|endoftext|>special >>TITLE<< tokens<|pad|>",          # added tokens, matched whole
    ">>QUESTION<<What is 2+2?>>ANSWER<<4<|endoftext|>",
    "42 + 2024 = 2066, pi is 3.14159 and 1,000,000 > 999",   # individual digits
    "x(normal) [a]{b} 'S it's I'LL do-it; 'quoted'",          # punctuation runs, contractions
    "it'ſt ǅ'ſ K'K",  # case folds where llama.cpp's '[sS] and (?i:'s) split differently
    "$5.00 -> 100%!!! ... ??? #tag @user ~/path",
    "Ünïcödé, emoji 🙂😀😀 and 中文, café naïve ß 日本語テキスト",
    "a\n\n\nb   \t\t c\r\n",                                  # whitespace runs
    "  two  spaces\nand a newline\n\n",
    "   leading and trailing   ",
    "<|user|>\nHi there<|assistant|>\n",                      # role markers are plain text
    "",
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", MAIN)
def test_packs_and_verifies_against_the_source(name, fmt, fixtures_root, packed):
    path = packed(name, fmt)
    r = cli("verify", path, "--source", fixtures_root / name, "--no-drift")
    assert r.exit_code == 0, r.output
    kvs = read_gguf(path).kvs
    assert kvs["general.architecture"] == "llama"
    assert (kvs["tokenizer.ggml.model"], kvs["tokenizer.ggml.pre"]) == ("gpt2", "falcon3")
    # the tokenizer adds no BOS (transformers); llama.cpp's falcon3 group would default to one
    assert kvs["tokenizer.ggml.add_bos_token"] is False
    assert kvs["tokenizer.ggml.eos_token_id"] == 11 == kvs["tokenizer.ggml.bos_token_id"]
    assert kvs["llama.rope.freq_base"] == (1000042.0 if name.startswith("Falcon3") else 10000.0)
    assert kvs["llama.attention.key_length"] == 64  # head_dim, written because config has it


def test_pre_name_follows_the_pre_tokenizer_configuration(fixtures_root):
    for name in MAIN + REVISIONS:
        tj = json.loads((fixtures_root / name / "tokenizer.json").read_text())
        assert tj["pre_tokenizer"] == PRE_TOKENIZERS["falcon3"]
        assert pre_tokenizer(fixtures_root / name) == "falcon3"
    assert pre_tokenizer(fixtures_root / "Llama3-8B-1.58-100B-tokens") == "llama-bpe"


@pytest.mark.parametrize("name", MAIN)
def test_gguf_tokenizer_equals_transformers(name, fixtures_root, packed):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(fixtures_root / name))
    path = packed(name, "tq2_0")
    ours = load_text_codec(path, load_gguf(path).kvs)
    for p in PROMPTS:
        ids = hf(p)["input_ids"]
        assert ours.encode(p) == ids, p
        assert ours.decode(ids) == hf.decode(ids), p
    specials = [ours.encode(t) for t in FALCON_SPECIALS]
    assert specials == [[i] for i in range(len(FALCON_SPECIALS))]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi! 2+2?"}]
    want = hf.apply_chat_template(msgs[1:], add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert ours.chat("Hi! 2+2?") == list(want)
    text = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>\nBe brief.\n<|user|>\nHi! 2+2?\n<|assistant|>\n"


@pytest.mark.parametrize("name", MAIN)
def test_gguf_tokenizer_equals_the_tokenizer_file(name, fixtures_root, packed):
    """Without transformers: the `tokenizers` library on the checkpoint's tokenizer.json."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(fixtures_root / name / "tokenizer.json"))
    path = packed(name, "i2s")
    ours = load_text_codec(path, load_gguf(path).kvs)
    for p in PROMPTS:
        assert ours.encode(p) == tok.encode(p).ids, p


def test_llama_cpp_loads_falcon3_and_tokenizes_alike(packed):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = packed("Falcon3-1B-Instruct-1.58bit", "tq2_0")
    ours = load_text_codec(path, load_gguf(path).kvs)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False)
    try:
        for p in PROMPTS:
            got = llm.tokenize(p.encode(), add_bos=False, special=True)
            assert got == ours.encode(p), p
        assert llm.tokenize(b"Hi", add_bos=True, special=True) == ours.encode("Hi")  # no BOS
        llm.eval(ours.encode("Hello world, how are you?"))
        assert np.isfinite(np.asarray(llm.scores[:1])).all()
    finally:
        llm.close()


def _ternary_bytes(path):
    gf = read_gguf(path)
    return {t.name: tensor_bytes(gf, t).tobytes() for t in gf.tensors
            if t.name.split(".")[-2] in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                          "ffn_up", "ffn_down") or t.name.endswith("_scale")}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", REVISIONS)
def test_revisions_pack_to_the_packed_models_codes_and_multipliers(name, fmt, packed):
    """prequantized (latent masters) and bfloat16 (codes x 1/weight_scale in bf16) give the very
    bytes of `main`'s ternary tensors: same codes, same float32 multipliers."""
    main = _ternary_bytes(packed("Falcon-E-1B-Instruct", fmt))
    assert len(main) >= 14
    assert _ternary_bytes(packed(name, fmt)) == main


def test_bfloat16_revision_is_kept_not_requantized(fixtures_root):
    """Its |W| take one value a per tensor: the multiplier is a itself. Absmean would have made it
    a x (fraction of non-zeros), about 2a/3, and the codes would not change, so only the scale
    would be silently wrong."""
    from bitconv.containers.safetensors import MappedFiles
    from bitconv.model.checkpoint import load_checkpoint
    ck = load_checkpoint(fixtures_root / "Falcon-E-1B-Instruct-bfloat16")
    main = load_checkpoint(fixtures_root / "Falcon-E-1B-Instruct")
    name = "model.layers.0.self_attn.q_proj.weight"
    with MappedFiles() as mf:
        w = to_float32(mf.view(ck.ref(name)), "BF16")
        scale = to_float32(mf.view(main.ref(name + "_scale")), "BF16")
    scan = AbsmeanScan(name)
    scan.merge(scan_part(w, "F32", name))
    m, already = scan.result()
    assert already and m == np.float32(1) / scale[0]
    nonzero = np.count_nonzero(w) / w.size
    assert 0.5 < nonzero < 0.8 and np.mean(np.abs(w)) == pytest.approx(m * nonzero)


def test_inspect_names_the_runtimes_that_load_the_tokenizer(packed):
    path = packed("Falcon3-1B-Instruct-1.58bit", "i2s")
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["summary"]["tokenizer loads in"] == "llama.cpp, bitnet.cpp"
    text = cli("inspect", path).output
    assert re.search(r"^tokenizer loads in +llama\.cpp, bitnet\.cpp$", text, re.MULTILINE)


def test_falcon_e_pre_name_is_read_and_labelled(packed, tmp_path):
    """TII's published Falcon-E GGUFs say pre 'falcon_e' (bitnet.cpp's converter): bitconv's
    runtime reads them as ik_llama.cpp does (the falcon3 splitter) and says who loads them."""
    path = packed("Falcon-E-1B-Instruct", "i2s")
    kvs = dict(load_gguf(path).kvs)
    ours = load_text_codec(path, kvs)
    kvs["tokenizer.ggml.pre"] = "falcon_e"
    theirs = load_text_codec(path, kvs)
    for p in PROMPTS:
        assert theirs.encode(p) == ours.encode(p), p
    assert "BitNet#622" in pre_runtimes("falcon_e")
    kvs["tokenizer.ggml.pre"] = "qwen2"
    with pytest.raises(Exception, match="tokenizer.ggml.pre 'qwen2' is not one bitconv can"):
        load_text_codec(path, kvs)


def test_repack_to_hf_rebuilds_the_falcon_tokenizer(fixtures_root, packed, tmp_path):
    from bitconv.stages.repack import repack
    src = fixtures_root / "Falcon3-1B-Instruct-1.58bit"
    out = repack(packed("Falcon3-1B-Instruct-1.58bit", "i2s"), format="hf", out=tmp_path / "hf")
    d = out.path if hasattr(out, "path") else out
    tj = json.loads((d / "tokenizer.json").read_text())
    assert tj["pre_tokenizer"] == PRE_TOKENIZERS["falcon3"]
    assert pre_tokenizer(d) == "falcon3"
    from tokenizers import Tokenizer
    a, b = Tokenizer.from_file(str(d / "tokenizer.json")), Tokenizer.from_file(
        str(src / "tokenizer.json"))
    for p in PROMPTS:
        assert a.encode(p).ids == b.encode(p).ids, p


def test_fixture_registry_names_the_revisions():
    assert {FIXTURES[n].revision for n in REVISIONS} == {"prequantized", "bfloat16"}
    assert len({FIXTURES[n].repo for n in REVISIONS + ["Falcon-E-1B-Instruct"]}) == 1


@pytest.mark.parametrize("name", MAIN)
def test_transformers_runs_the_fixture_as_our_runtime_does(name, fixtures_root, monkeypatch):
    """transformers' LlamaForCausalLM + BitNet quantizer on the fixture itself (explicit head_dim,
    an integer rope_theta) against bitconv's exact mode, judged as test_transformers_xcheck does."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_transformers_xcheck import check_agreement, run_both
    src = fixtures_root / name
    check_agreement(*run_both(src, src, monkeypatch))


def test_where_llama_cpps_falcon3_splitter_differs_from_the_tokenizer_file(fixture_copy,
                                                                           tmp_path):
    """llama.cpp runs pre `falcon3` with Llama-3's regex, not TII's splitter. With a newline-run
    merge in the vocabulary ("Ċ Ċ", which TII's splitter can learn from a trailing "\\n\\n") the two
    disagree on "a\\n\\nb": llama.cpp keeps "\\n\\n" in one piece, TII's splitter cuts it in two.
    bitconv's GGUF tokenizer is llama.cpp's (it says what the runtimes compute); this pins the
    difference so a reader knows it exists (bitconv/model/tokenizer/from_files.py)."""
    from tokenizers import Tokenizer
    src = fixture_copy("Falcon3-1B-Instruct-1.58bit")
    tj = json.loads((src / "tokenizer.json").read_text())
    last = tj["model"]["merges"][-1]
    a, b = last.split(" ") if isinstance(last, str) else last
    tok_id = tj["model"]["vocab"].pop(a + b)  # the last merge's token: nothing builds on it
    tj["model"]["vocab"]["ĊĊ"] = tok_id
    tj["model"]["merges"][-1] = "Ċ Ċ"
    (src / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    path = pack(src, format="tq2_0", out=tmp_path / "f.gguf").path
    ours = load_text_codec(path, load_gguf(path).kvs)
    theirs = Tokenizer.from_file(str(src / "tokenizer.json"))
    nl = theirs.token_to_id("Ċ")
    assert theirs.encode("a\n\nb").ids[1:3] == [nl, nl]
    assert ours.encode("a\n\nb")[1] == tok_id
    assert ours.encode("a\n\n") == theirs.encode("a\n\n").ids  # a trailing run: one piece in both
    try:
        import llama_cpp
    except ImportError:
        return
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(b"a\n\nb", add_bos=False, special=True) == ours.encode("a\n\nb")
    finally:
        llm.close()
