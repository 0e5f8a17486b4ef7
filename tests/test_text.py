"""Tokenization (checkpoint files, GGUF metadata, transformers) and `bitconv run`/`logits -p`."""
from __future__ import annotations

import numpy as np
import pytest

from bitconv.runtime.generate import generate
from bitconv.runtime.model import Model
from bitconv.runtime.text import load_text_codec
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from tests.support.cli import cli

FAMILIES = ["bitnet_b1_58-large", "bitnet-b1.58-2B-4T", "Llama3-8B-1.58-100B-tokens"]
PROMPTS = ["Hello world, how are you?", "  two  spaces\nand a newline\n\n", "42 + 2024 = 2066",
           "Ünïcödé, emoji 🙂 and 中文", "", "the quick brown fox",
           "<|begin_of_text|>special <|eot_id|> tokens", "</s> <s> [INST]"]


@pytest.mark.parametrize("name", FAMILIES)
def test_gguf_tokenizer_equals_the_checkpoint_files(name, fixtures_root, packed):
    src = fixtures_root / name
    from_files = load_text_codec(src, load_checkpoint_weights(src).kvs)
    from_gguf = load_text_codec(packed(name, "i2s"), load_gguf(packed(name, "i2s")).kvs)
    for p in PROMPTS:
        assert from_gguf.encode(p) == from_files.encode(p), p
        ids = from_files.encode(p)
        assert from_gguf.decode(ids) == from_files.decode(ids), p


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenization_equals_transformers(name, fixtures_root, packed):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(fixtures_root / name))
    ours = load_text_codec(packed(name, "i2s"), load_gguf(packed(name, "i2s")).kvs)
    for p in PROMPTS:
        if name == "bitnet_b1_58-large" and p[:1].isspace():
            # SentencePiece (and llama.cpp) always add the dummy-prefix space; transformers 5's
            # Llama tokenizer (Metaspace, prepend_scheme "first") skips it when the text already
            # starts with a space. We follow sentencepiece, the model's own tokenizer: pinned below.
            continue
        assert ours.encode(p) == hf(p)["input_ids"], p
    if hf.chat_template is not None:
        msgs = [{"role": "user", "content": "Hi there! 2+2?"}]
        want = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
        assert ours.chat("Hi there! 2+2?") == list(want)


def test_spm_leading_space_follows_sentencepiece(fixtures_root):
    import sentencepiece
    src = fixtures_root / "bitnet_b1_58-large"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    ours = load_text_codec(src, load_checkpoint_weights(src).kvs)
    for p in PROMPTS[:4]:
        assert ours.encode(p) == [ours.bos_id, *sp.encode(p)], p


def test_no_chat_template_is_a_clear_error(fixtures_root, packed):
    name = "bitnet_b1_58-large"  # 1bitLLM ships no chat template
    r = cli("run", packed(name, "i2s"), "-p", "hi", "--chat")
    assert r.exit_code == 1
    assert r.stderr == "Error: the model has no chat template; run without --chat\n"


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_run_is_the_same_from_file_and_source(name, fixtures_root, packed):
    args = ["-p", "Hello world, how are", "-n", "12"]
    a = cli("run", packed(name, "i2s"), *args)
    b = cli("run", fixtures_root / name, *args)
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert a.stdout == b.stdout and a.stdout.strip()
    # and at the level of ids, where text decoding cannot hide a difference
    src = fixtures_root / name
    codec = load_text_codec(src, load_checkpoint_weights(src).kvs)
    ids = codec.encode("Hello world, how are")
    ta = list(generate(Model(load_gguf(packed(name, "i2s"))), ids, 12))
    tb = list(generate(Model(load_checkpoint_weights(src)), ids, 12))
    assert ta == tb and len(ta) == 12


def test_sampling_is_seeded(packed):
    path = str(packed("bitnet-b1.58-2B-4T", "i2s"))
    run = lambda seed: cli(
        "run", path, "-p", "Hello", "-n", "10", "--temperature", "1.5", "--seed", seed).stdout
    assert run("1") == run("1")
    assert run("1") != run("2")


def test_logits_of_a_prompt_equal_logits_of_its_ids(packed, tmp_path):
    path = packed("Llama3-8B-1.58-100B-tokens", "i2s")
    codec = load_text_codec(path, load_gguf(path).kvs)
    ids = codec.encode("Hello world")
    assert ids[0] == codec.bos_id
    r1 = cli("logits", path, "-p", "Hello world", "-o", tmp_path / "a.npy")
    r2 = cli("logits", path, "--tokens", ",".join(map(str, ids)), "-o", tmp_path / "b.npy")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_logits_needs_exactly_one_input(packed, tmp_path):
    r = cli("logits", packed("bitnet-b1.58-2B-4T", "i2s"), "-o", tmp_path / "a.npy")
    assert r.exit_code == 2 and "give exactly one of --tokens and --prompt" in r.stderr
