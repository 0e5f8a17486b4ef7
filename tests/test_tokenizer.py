"""Synthetic tokenizer files (bitconv.synth.tokenizers) and their GGUF metadata (bitconv.model.tokenizer.from_files).

Peers: `tokenizers`, `sentencepiece` and transformers' AutoTokenizer load the files; gguf-py's
SpecialVocab / BpeVocab / SentencePieceVocab (what llama.cpp's converter uses) check the KVs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import sentencepiece as spm
import tokenizers
from gguf import GGUFValueType, Keys, TokenType
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from bitconv.errors import InputError
from bitconv.model.tokenizer.from_files import tokenizer_kvs
from bitconv.synth.tokenizers import LLAMA3_SPECIALS, write_llama2_spm, write_llama3_bpe

K = Keys.Tokenizer
BPE_VOCAB, SPM_VOCAB = 1024, 512
TEXT = "Hello world, how are you?"
UNICODE = "naïve café ✓ 42"  # bytes outside the learned pieces: byte-level / byte fallback


def _checkpoint(dst: Path, writer, vocab_size: int) -> tuple[Path, dict]:
    dst.mkdir(parents=True, exist_ok=True)
    facts = writer(dst, vocab_size)
    cfg = {"model_type": "llama", **{k: v for k, v in facts.items() if k.endswith("_id")}}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, facts


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> tuple[Path, dict]:
    return _checkpoint(tmp_path_factory.mktemp("bpe"), write_llama3_bpe, BPE_VOCAB)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory) -> tuple[Path, dict]:
    return _checkpoint(tmp_path_factory.mktemp("spm"), write_llama2_spm, SPM_VOCAB)


def _kv(kvs, key):
    found = [kv for kv in kvs if kv.key == key]
    assert len(found) <= 1
    return found[0] if found else None


def _auto(path: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(path)


# --- the generated files ---------------------------------------------------------------------

@pytest.mark.parametrize("writer,vocab_size,files", [
    (write_llama3_bpe, BPE_VOCAB, ["special_tokens_map.json", "tokenizer.json",
                                   "tokenizer_config.json"]),
    (write_llama2_spm, SPM_VOCAB, ["added_tokens.json", "special_tokens_map.json",
                                   "tokenizer.model", "tokenizer_config.json"]),
])
def test_files_are_deterministic(tmp_path, writer, vocab_size, files):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert writer(a, vocab_size) == writer(b, vocab_size)
    assert sorted(p.name for p in a.iterdir()) == files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_bpe_facts_and_special_ids(bpe):
    path, facts = bpe
    assert facts == {"bos_token_id": 768, "eos_token_id": 769, "vocab_size": 1024}
    tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == BPE_VOCAB
    # Meta-Llama-3 order, shifted from 128000 to 768.
    expected = {"<|begin_of_text|>": 768, "<|end_of_text|>": 769,
                "<|reserved_special_token_0|>": 770, "<|reserved_special_token_3|>": 773,
                "<|start_header_id|>": 774, "<|end_header_id|>": 775,
                "<|reserved_special_token_4|>": 776, "<|eot_id|>": 777,
                "<|reserved_special_token_5|>": 778, "<|reserved_special_token_250|>": 1023}
    assert {t: tok.token_to_id(t) for t in expected} == expected
    assert [tok.token_to_id(t) for t in LLAMA3_SPECIALS] == list(range(768, 1024))
    assert [tok.id_to_token(i) for i in (0, 1, 187, 188, 220)] == ["!", '"', "ÿ", "Ā", "Ġ"]


def test_bpe_round_trip_tokenizers(bpe):
    tok = tokenizers.Tokenizer.from_file(str(bpe[0] / "tokenizer.json"))
    for text in (TEXT, UNICODE):
        enc = tok.encode(text)
        assert enc.ids[0] == 768  # TemplateProcessing prepends <|begin_of_text|>
        assert tok.decode(enc.ids, skip_special_tokens=True) == text
    # the learned merges are real: common words are single tokens
    assert tok.encode(TEXT).tokens == ["<|begin_of_text|>", "Hello", "Ġworld", ",", "Ġhow",
                                       "Ġare", "Ġyou", "?"]


def test_spm_facts_and_pieces(spm_dir):
    path, facts = spm_dir
    assert facts == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 510, "vocab_size": 512}
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    assert sp.get_piece_size() == 510
    assert [sp.id_to_piece(i) for i in (0, 1, 2, 3, 258)] == ["<unk>", "<s>", "</s>", "<0x00>",
                                                               "<0xFF>"]
    assert sp.is_unknown(0) and sp.is_control(1) and sp.is_control(2)
    assert all(sp.is_byte(i) for i in range(3, 259))
    assert (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id()) == (1, 2, 0, -1)
    learned = [sp.get_score(i) for i in range(259, 510)]
    assert learned == sorted(learned, reverse=True) and learned[0] == 0.0
    assert json.loads((path / "added_tokens.json").read_text()) == {"<pad>": 510}
    proto = sp_pb2.ModelProto.FromString((path / "tokenizer.model").read_bytes())
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    assert (ts.model_type, ts.byte_fallback, ts.vocab_size) == (sp_pb2.TrainerSpec.BPE, True, 510)
    assert (ns.name, ns.add_dummy_prefix, ns.escape_whitespaces, ns.remove_extra_whitespaces) == (
        "identity", True, True, False)


def test_spm_round_trip_sentencepiece(spm_dir):
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir[0] / "tokenizer.model"))
    for text in (TEXT, UNICODE):
        assert sp.decode(sp.encode(text)) == text
    assert sp.encode(TEXT, out_type=str)[0].startswith("▁")  # add_dummy_prefix
    assert "<0xC3>" in sp.encode(UNICODE, out_type=str)  # byte fallback for "ï"


def test_transformers_round_trip_bpe(bpe):
    tok = _auto(bpe[0])
    for text in (TEXT, UNICODE):
        ids = tok.encode(text)
        assert ids[0] == 768
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (768, 769, BPE_VOCAB)


def test_transformers_round_trip_spm_matches_sentencepiece(spm_dir):
    tok = _auto(spm_dir[0])
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir[0] / "tokenizer.model"))
    for text in (TEXT, UNICODE):
        ids = tok.encode(text)
        assert ids == [1] + sp.encode(text)
        assert tok.decode(ids, skip_special_tokens=True) == text
    ids = (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id)
    assert ids == (1, 2, 0, 510)


def test_chat_template_renders_2b4t_format(bpe):
    tok = _auto(bpe[0])
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "  How are you?  "}]
    # Written from the template: bos once, `Role: trimmed content<|eot_id|>` per turn, then
    # the generation prompt `Assistant: `.
    expected = ("<|begin_of_text|>System: You are a helpful assistant.<|eot_id|>"
                "User: How are you?<|eot_id|>Assistant: ")
    got = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert got == expected
    without = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without == expected.removesuffix("Assistant: ")


# --- tokenizer_kvs ----------------------------------------------------------------------------

def test_kvs_bpe_order_and_types(bpe):
    kvs = tokenizer_kvs(bpe[0], BPE_VOCAB, "llama-bpe")
    assert [kv.key for kv in kvs] == [K.MODEL, K.PRE, K.LIST, K.TOKEN_TYPE, K.MERGES, K.BOS_ID,
                                      K.EOS_ID, K.ADD_BOS, K.ADD_EOS, K.CHAT_TEMPLATE]
    assert (_kv(kvs, K.MODEL).value, _kv(kvs, K.PRE).value) == ("gpt2", "llama-bpe")
    assert _kv(kvs, K.TOKEN_TYPE).subtype == GGUFValueType.INT32
    assert _kv(kvs, K.BOS_ID).vtype == GGUFValueType.UINT32
    assert _kv(kvs, K.ADD_BOS).vtype == GGUFValueType.BOOL


def test_kvs_bpe_match_special_vocab(bpe):
    kvs = tokenizer_kvs(bpe[0], BPE_VOCAB, "llama-bpe")
    sv = gguf.SpecialVocab(bpe[0], load_merges=True, n_vocab=BPE_VOCAB)
    assert _kv(kvs, K.MERGES).value == sv.merges and len(sv.merges) >= 512
    ids = {typ: _kv(kvs, key).value for typ, key in
           (("bos", K.BOS_ID), ("eos", K.EOS_ID), ("unk", K.UNK_ID), ("pad", K.PAD_ID))
           if _kv(kvs, key) is not None}
    assert ids == sv.special_token_ids == {"bos": 768, "eos": 769}
    assert _kv(kvs, K.ADD_BOS).value is sv.add_special_token["bos"] is True
    assert _kv(kvs, K.ADD_EOS).value is sv.add_special_token["eos"] is False
    assert _kv(kvs, K.CHAT_TEMPLATE).value == sv.chat_template


def test_kvs_bpe_tokens_match_transformers(bpe):
    kvs = tokenizer_kvs(bpe[0], BPE_VOCAB, "llama-bpe")
    tokens, types = _kv(kvs, K.LIST).value, _kv(kvs, K.TOKEN_TYPE).value
    tok = _auto(bpe[0])
    assert tokens == tok.convert_ids_to_tokens(list(range(BPE_VOCAB)))
    assert set(tok.all_special_ids) <= {i for i, t in enumerate(types) if t == TokenType.CONTROL}
    assert types == [TokenType.NORMAL] * 768 + [TokenType.CONTROL] * 256
    peer = gguf.vocab.BpeVocab(bpe[0])  # gguf-py's own tokenizer.json reader
    texts = [t.decode() if isinstance(t, bytes) else t for t, _, _ in peer.all_tokens()]
    assert texts == tokens  # BpeVocab yields str for the vocab, bytes for added tokens


def test_kvs_spm_match_sentencepiece(spm_dir):
    kvs = tokenizer_kvs(spm_dir[0], SPM_VOCAB, None)
    assert [kv.key for kv in kvs] == [K.MODEL, K.PRE, K.LIST, K.SCORES, K.TOKEN_TYPE, K.BOS_ID,
                                      K.EOS_ID, K.UNK_ID, K.PAD_ID, K.ADD_BOS, K.ADD_EOS]
    assert (_kv(kvs, K.MODEL).value, _kv(kvs, K.PRE).value) == ("llama", "default")
    assert _kv(kvs, K.SCORES).subtype == GGUFValueType.FLOAT32
    tokens, scores, types = (_kv(kvs, k).value for k in (K.LIST, K.SCORES, K.TOKEN_TYPE))
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir[0] / "tokenizer.model"))
    for i in range(sp.get_piece_size()):
        want = (TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                else TokenType.BYTE if sp.is_byte(i) else TokenType.NORMAL)
        assert (tokens[i], scores[i], types[i]) == (sp.id_to_piece(i), sp.get_score(i), want), i
    # added_tokens.json's <pad> (looks special -> CONTROL), then one id named by no file
    assert (tokens[510], scores[510], types[510]) == ("<pad>", -1000.0, TokenType.CONTROL)
    assert (tokens[511], scores[511], types[511]) == ("[PAD511]", -10000.0, TokenType.UNUSED)
    peer = gguf.vocab.SentencePieceVocab(spm_dir[0])
    assert [(t.decode(), s) for t, s, _ in peer.all_tokens()] == list(zip(tokens, scores))[:511]


def test_kvs_spm_match_special_vocab(spm_dir):
    kvs = tokenizer_kvs(spm_dir[0], SPM_VOCAB, None)
    sv = gguf.SpecialVocab(spm_dir[0], load_merges=True, n_vocab=SPM_VOCAB)
    assert sv.merges == [] and _kv(kvs, K.MERGES) is None
    keys = {"bos": K.BOS_ID, "eos": K.EOS_ID, "unk": K.UNK_ID, "pad": K.PAD_ID}
    for typ, tok_id in sv.special_token_ids.items():
        assert _kv(kvs, keys[typ]).value == tok_id, typ
    assert sv.special_token_ids == {"bos": 1, "eos": 2, "pad": 510}
    assert _kv(kvs, K.UNK_ID).value == 0  # from tokenizer_config's unk_token; SpecialVocab has none
    assert _kv(kvs, K.ADD_BOS).value is sv.add_special_token["bos"] is True
    assert _kv(kvs, K.ADD_EOS).value is sv.add_special_token["eos"] is False
    assert sv.chat_template is None and _kv(kvs, K.CHAT_TEMPLATE) is None


def test_kvs_write_to_gguf(tmp_path, bpe, spm_dir):
    for src, vocab_size in ((bpe[0], BPE_VOCAB), (spm_dir[0], SPM_VOCAB)):
        kvs = tokenizer_kvs(src, vocab_size, "llama-bpe")
        out = tmp_path / f"{src.name}.gguf"
        w = gguf.GGUFWriter(out, "llama")
        for kv in kvs:
            w.add_key_value(kv.key, kv.value, kv.vtype, kv.subtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        fields = gguf.GGUFReader(out).fields
        assert fields[K.LIST].contents() == _kv(kvs, K.LIST).value
        assert fields[K.BOS_ID].contents() == _kv(kvs, K.BOS_ID).value


def test_kvs_prefers_tokenizer_model(tmp_path, bpe, spm_dir):
    both = tmp_path / "both"
    shutil.copytree(spm_dir[0], both)
    shutil.copy(bpe[0] / "tokenizer.json", both / "tokenizer.json")
    assert _kv(tokenizer_kvs(both, SPM_VOCAB, "llama-bpe"), K.MODEL).value == "llama"


def test_kvs_no_tokenizer_error(tmp_path):
    with pytest.raises(InputError) as e:
        tokenizer_kvs(tmp_path, 1024, "llama-bpe")
    assert str(e.value) == f"{tmp_path}: no tokenizer.model or tokenizer.json"


@pytest.mark.parametrize("which", ["bpe", "spm_dir"])
def test_kvs_vocab_larger_than_model(request, which):
    src, _ = request.getfixturevalue(which)
    with pytest.raises(InputError, match=r"outside the model's vocab_size 300; check that "
                                         r"config.json and the tokenizer files match"):
        tokenizer_kvs(src, 300, "llama-bpe")


def test_kvs_bpe_needs_pre(bpe):
    with pytest.raises(InputError, match="needs a llama.cpp pre-tokenizer name"):
        tokenizer_kvs(bpe[0], BPE_VOCAB, None)


def test_kvs_bpe_pads_to_vocab_size(bpe):
    kvs = tokenizer_kvs(bpe[0], BPE_VOCAB + 2, "llama-bpe")
    assert _kv(kvs, K.LIST).value[-2:] == ["[PAD1024]", "[PAD1025]"]
    assert _kv(kvs, K.TOKEN_TYPE).value[-2:] == [TokenType.UNUSED] * 2
