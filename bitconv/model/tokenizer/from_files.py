r"""GGUF tokenizer metadata read from a checkpoint's tokenizer files, without transformers.

Mirrors llama.cpp's convert_hf_to_gguf (reference/llama-cpp.md §3.6): `_set_vocab_sentencepiece`
for `tokenizer.model`, `_set_vocab_gpt2` for a BPE `tokenizer.json`, then gguf's `SpecialVocab`
for merges, special ids, add_* flags and the chat template. KVs come in the order the converter
writes them: model, pre, tokens, scores, token_type, merges, special ids, add_* flags, template.

`tokenizer.ggml.pre` names a pre-tokenizer that each runtime implements with its own split
regex (llama.cpp src/llama-vocab.cpp). bitconv names it from the tokenizer.json's pre_tokenizer
configuration (PRE_TOKENIZERS), never from a hash of a probe text as llama.cpp's converter does:
- `llama-bpe`: Llama-3's Split regex + ByteLevel (the 2B4T and HF1BitLLM vocabularies);
- `falcon3`: TII's Punctuation(contiguous) + ByteLevel(GPT-2 regex) + Digits(individual)
  (Falcon3 and Falcon-E; synth/falcon.py holds the sources). llama.cpp (mainline, and every
  bitnet.cpp build) runs `falcon3` with Llama-3's regex, which is not the same splitter
  (e.g. Llama-3's `\s*[\r\n]+` keeps "\n\n" together, `\p{N}{1,3}` keeps "333" together,
  `[^\r\n\p{L}\p{N}]?\p{L}+` keeps "(normal" together); the token ids agree whenever no
  merge of the vocabulary joins across those extra boundaries (Falcon3's merges were learned on
  its own splits, so digits and punctuation never merge with neighbours; a newline-run merge
  such as "ĊĊ" would: tests/test_falcon.py pins one). RUNTIME_SPLIT is the regex each name runs.
- `falcon_e` is what bitnet.cpp's converter writes for Falcon-E; only its fork between
  microsoft/BitNet#268 and the 2025 submodule update knows it (#622). bitconv writes `falcon3`
  for the same configuration and reads `falcon_e` as ik_llama.cpp does (#551: as `falcon3`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitconv.errors import InputError
from bitconv.gguf_values import GGUFValueType, TokenType
from bitconv.gguf_values import TokenizerKeys as K
from bitconv.types import KV

_SPECIAL_KEYS = {"bos": K.BOS_ID, "eos": K.EOS_ID, "unk": K.UNK_ID, "pad": K.PAD_ID}
# The split regex of Llama-3's pre-tokenizer (`llama-bpe`), as in meta-llama/Meta-Llama-3-8B
# tokenizer.json; the runtime rebuilds Llama-3 tokenizers from GGUF metadata with it.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.json pre_tokenizer configurations (as `tokenizers` serializes them) -> GGUF pre name.
_LLAMA3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
_FALCON3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Punctuation", "behavior": "Contiguous"},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    {"type": "Digits", "individual_digits": True}]}
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {"llama-bpe": _LLAMA3_PRE, "falcon3": _FALCON3_PRE}
# The split regex llama.cpp runs for each pre name bitconv reads (llama-vocab.cpp, LLAMA3 group).
# llama.cpp spells the contractions `(?:'[sS]|'[tT]|...)` where the original has
# `(?i:'s|'t|...)`; character by character they differ only on Unicode case folds of those
# letters, e.g. U+017F (long s): "'ſt" is "'ſ" + "t" here and one piece "'ſt" in llama.cpp (its
# next alternative takes the apostrophe with the letters); the ids differ only if the vocab
# merges across that boundary (the Falcon fixtures: identical, tests/test_falcon.py). `falcon_e`:
# bitnet.cpp's own regex for it is not in any source we could read; ik_llama.cpp maps it to
# the LLAMA3 group (ikawrakow/ik_llama.cpp#551, #555) and so do we.
RUNTIME_SPLIT = {"llama-bpe": LLAMA3_SPLIT, "falcon3": LLAMA3_SPLIT, "falcon_e": LLAMA3_SPLIT}
# Which runtimes load a GGUF with this pre name (llama.cpp: llama-vocab.cpp's name table).
PRE_RUNTIMES = {
    "default": "llama.cpp, bitnet.cpp",
    "llama-bpe": "llama.cpp, bitnet.cpp",
    "falcon3": "llama.cpp, bitnet.cpp",
    "falcon_e": ("bitnet.cpp builds from microsoft/BitNet#268 (2025-05) to its 2025 llama.cpp "
                 "submodule update only; llama.cpp and later bitnet.cpp refuse it (BitNet#622); "
                 "the same tokenizer as pre 'falcon3' loads everywhere"),
}


def pre_runtimes(pre: str) -> str:
    """Which runtimes load a GGUF whose tokenizer.ggml.pre is `pre` (inspect prints it)."""
    return PRE_RUNTIMES.get(pre, f"pre {pre!r} unknown to bitconv: see each runtime's "
                                 "llama-vocab.cpp")


PAD_SCORE = -10000.0  # llama.cpp's score for ids no tokenizer file names
_ADDED_SCORE = -1000.0  # llama.cpp's score for added_tokens.json entries


def tokenizer_kvs(src: Path, vocab_size: int, pre: str | None) -> list[KV]:
    """The `tokenizer.*` GGUF metadata for the checkpoint directory `src`.

    `tokenizer.model` (SentencePiece) is used when present, else `tokenizer.json` (BPE only).
    The token list is padded to `vocab_size` with `[PAD{i}]` (UNUSED), as llama.cpp does.

    Args:
        src: checkpoint directory.
        vocab_size: the model's vocab size (embedding rows); the tokenizer may not exceed it.
        pre: llama.cpp pre-tokenizer name for BPE (e.g. "llama-bpe"); SentencePiece uses "default".

    Example:
        >>> kvs = tokenizer_kvs(Path("ckpt"), 128256, "llama-bpe")
        >>> [kv.key for kv in kvs][:2]
        ['tokenizer.ggml.model', 'tokenizer.ggml.pre']
    """
    if (src / "tokenizer.model").is_file():
        return _spm_kvs(src, vocab_size)
    if (src / "tokenizer.json").is_file():
        return _bpe_kvs(src, vocab_size, pre)
    raise InputError(f"{src}: no tokenizer.model or tokenizer.json")


def pre_tokenizer(path: Path) -> str | None:
    """llama.cpp's pre-tokenizer name, from the tokenizer.json's pre_tokenizer configuration
    (PRE_TOKENIZERS); our writer sets it instead of hashing (DESIGN.md §5b). A configuration
    bitconv does not know is refused rather than mislabelled."""
    tj = path / "tokenizer.json"
    if (path / "tokenizer.model").is_file() or not tj.is_file():
        return None
    try:
        data = json.loads(tj.read_text(encoding="utf-8"))
        added = {t["content"] for t in data["added_tokens"]}
        config = _canonical(data.get("pre_tokenizer"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{tj}: malformed tokenizer.json") from None
    for name, known in PRE_TOKENIZERS.items():
        if config == _canonical(known):
            return name
    if "<|begin_of_text|>" in added:  # a Llama-3 vocabulary whose splitter is spelled otherwise
        return "llama-bpe"
    kinds = [p.get("type") for p in (config or {}).get("pretokenizers", [config or {}])]
    raise InputError(f"{tj}: pre_tokenizer {'+'.join(map(str, kinds))} is none bitconv can name "
                     f"for llama.cpp (it knows {', '.join(PRE_TOKENIZERS)})")


def _canonical(cfg: Any) -> Any:
    """A pre_tokenizer configuration with enum spellings folded (`tokenizers` writes
    "Contiguous", hand-written files often "contiguous")."""
    if isinstance(cfg, dict):
        return {k: (v.lower() if k == "behavior" and isinstance(v, str) else _canonical(v))
                for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [_canonical(v) for v in cfg]
    return cfg


def _read_json(path: Path) -> Any:
    """A JSON object file (tokenizer.json, tokenizer_config.json, config.json), None if absent."""
    if not path.exists() and not path.is_symlink():  # anything else fails to open in one line
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _check_bpe(path: Path, model: Mapping[str, Any], added: Any) -> None:
    """The JSON types of a BPE tokenizer.json's vocab, merges and added tokens."""
    vocab, merges = model.get("vocab"), model.get("merges", [])
    if not (isinstance(vocab, dict) and all(type(i) is int for i in vocab.values())):
        raise InputError(f"{path}: model.vocab must map tokens to integer ids")
    if not (isinstance(merges, list) and all(
            isinstance(m, str) or (isinstance(m, list) and len(m) == 2
                                   and all(isinstance(x, str) for x in m)) for m in merges)):
        raise InputError(f"{path}: model.merges must be a list of \"a b\" strings or [a, b] pairs")
    if not (isinstance(added, list) and all(
            isinstance(t, dict) and type(t.get("id")) is int and isinstance(t.get("content"), str)
            for t in added)):
        raise InputError(f"{path}: added_tokens must be a list of {{id, content}} objects")


def _looks_special(token: str) -> bool:
    # llama.cpp's does_token_look_special: added tokens that act as control tokens in practice.
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _place(src: Path, table: list[str | None], tok_id: int, token: str) -> None:
    if not isinstance(tok_id, int) or not 0 <= tok_id < len(table):
        raise InputError(f"{src}: token {token!r} has id {tok_id}, outside the model's vocab_size "
                         f"{len(table)}; check that config.json and the tokenizer files match")
    table[tok_id] = token


def pad_name(tok_id: int) -> str:
    """llama.cpp's placeholder for an id that no tokenizer file names (type UNUSED)."""
    return f"[PAD{tok_id}]"


def _pad_names(tokens: list[str | None]) -> list[str]:
    return [t if t is not None else pad_name(i) for i, t in enumerate(tokens)]


def _bpe_kvs(src: Path, vocab_size: int, pre: str | None) -> list[KV]:
    path = src / "tokenizer.json"
    tj = _read_json(path)
    model = tj.get("model", {}) if isinstance(tj, dict) else {}
    if model.get("type") != "BPE":
        raise InputError(f"{path}: model type {model.get('type')!r} is not supported (BPE only)")
    if pre is None:
        raise InputError(f"{path}: a BPE tokenizer needs a llama.cpp pre-tokenizer name "
                         "(e.g. 'llama-bpe' for Llama-3)")
    _check_bpe(path, model, tj.get("added_tokens", []))
    tokens: list[str | None] = [None] * vocab_size
    for token, tok_id in model.get("vocab", {}).items():
        _place(src, tokens, tok_id, token)
    types = [TokenType.NORMAL] * vocab_size
    for added in tj.get("added_tokens", []):
        _place(src, tokens, added["id"], added["content"])
        special = added.get("special", False) or _looks_special(added["content"])
        types[added["id"]] = TokenType.CONTROL if special else TokenType.USER_DEFINED
    for i, token in enumerate(tokens):
        if token is None:
            types[i] = TokenType.UNUSED
    names = _pad_names(tokens)
    # Merges are "a b" strings, or [a, b] pairs since tokenizers 0.20; a space inside a part
    # becomes U+0120 as in gguf's SpecialVocab, so "a b" stays splittable.
    merges = [m if isinstance(m, str) else " ".join(p.replace(" ", "\u0120") for p in m)
              for m in model.get("merges", [])]
    if not merges:  # llama.cpp refuses a gpt2 vocab without them
        raise InputError(f"{path}: the BPE model has no merges")
    kvs = [KV(K.MODEL, GGUFValueType.STRING, "gpt2"), KV(K.PRE, GGUFValueType.STRING, pre),
           KV(K.LIST, GGUFValueType.ARRAY, names, GGUFValueType.STRING),
           KV(K.TOKEN_TYPE, GGUFValueType.ARRAY, [int(t) for t in types], GGUFValueType.INT32),
           KV(K.MERGES, GGUFValueType.ARRAY, merges, GGUFValueType.STRING)]
    lookup = {t: i for i, t in enumerate(names)}
    # A BPE tokenizer that says nothing adds nothing (transformers); llama.cpp's default for the
    # Llama-3 pre group is add_bos true, so the flags are written whenever the file is silent.
    return kvs + _special_kvs(src, lookup, vocab_size, {}, _template_adds(tj), silent=False)


def _template_adds(tj: Mapping[str, Any]) -> dict[str, str]:
    """{"bos"/"eos": token} that the TemplateProcessing post-processor puts around a sequence."""
    post = tj.get("post_processor") or {}
    for proc in post.get("processors", [post]):
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single", [])
            ends = {"bos": single[0] if single else {}, "eos": single[-1] if single else {}}
            return {typ: e["SpecialToken"]["id"] for typ, e in ends.items() if "SpecialToken" in e}
    return {}


def spm_pb2() -> Any:
    """SentencePiece's ModelProto module, imported on first use: sentencepiece and protobuf
    cost ~15 ms that a BPE checkpoint, and every command that reads no tokenizer, never needs."""
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2  # generated protobuf code: no static attributes


def _spm_kvs(src: Path, vocab_size: int) -> list[KV]:
    from google.protobuf.message import DecodeError

    path = src / "tokenizer.model"
    try:
        proto = spm_pb2().ModelProto.FromString(path.read_bytes())
    except DecodeError as e:
        raise InputError(f"{path}: not a SentencePiece model ({e})") from e
    tokens: list[str | None] = [None] * vocab_size
    scores = [PAD_SCORE] * vocab_size
    types = [TokenType.UNUSED] * vocab_size
    for i, piece in enumerate(proto.pieces):  # SentencePiece's piece types share gguf's numbering
        _place(src, tokens, i, piece.piece)
        scores[i], types[i] = piece.score, TokenType(piece.type)
    # Added tokens: added_tokens_decoder entries beyond the pieces, then added_tokens.json.
    decoder = (_read_json(src / "tokenizer_config.json") or {}).get("added_tokens_decoder", {})
    added = {v["content"]: int(k) for k, v in decoder.items() if int(k) >= len(proto.pieces)}
    added |= _read_json(src / "added_tokens.json") or {}
    for token, tok_id in sorted(added.items(), key=lambda kv: kv[1]):
        if tok_id < len(proto.pieces) and proto.pieces[tok_id].piece == token:
            continue  # an added entry that restates a piece changes nothing
        _place(src, tokens, tok_id, token)
        special = decoder.get(str(tok_id), {}).get("special", False) or _looks_special(token)
        scores[tok_id] = _ADDED_SCORE
        types[tok_id] = TokenType.CONTROL if special else TokenType.USER_DEFINED
    names = _pad_names(tokens)
    kvs = [KV(K.MODEL, GGUFValueType.STRING, "llama"), KV(K.PRE, GGUFValueType.STRING, "default"),
           KV(K.LIST, GGUFValueType.ARRAY, names, GGUFValueType.STRING),
           KV(K.SCORES, GGUFValueType.ARRAY, scores, GGUFValueType.FLOAT32),
           KV(K.TOKEN_TYPE, GGUFValueType.ARRAY, [int(t) for t in types], GGUFValueType.INT32)]
    ts = proto.trainer_spec
    defaults = {"unk": ts.unk_id, "bos": ts.bos_id, "eos": ts.eos_id, "pad": ts.pad_id}
    lookup = {t: i for i, t in enumerate(names)}
    return kvs + _special_kvs(src, lookup, vocab_size, defaults, {})


def _special_kvs(src: Path, lookup: Mapping[str, int], vocab_size: int,
                 defaults: Mapping[str, int], template: Mapping[str, str],
                 silent: bool | None = None) -> list[KV]:
    """Special ids, add_* flags and the chat template.

    Ids: the tokenizer_config.json `*_token` name looked up in the vocab, else config.json's
    `*_token_id`, else the SentencePiece trainer's id (`defaults`; -1 means none).
    """
    tc = _read_json(src / "tokenizer_config.json") or {}
    cfg = _read_json(src / "config.json") or {}
    kvs: list[KV] = []
    for typ, key in _SPECIAL_KEYS.items():
        name = _name(tc, typ)
        tok_id = lookup.get(name) if name is not None else None
        if tok_id is None and isinstance(cfg.get(f"{typ}_token_id"), int):
            tok_id = cfg[f"{typ}_token_id"]
        if tok_id is None and defaults.get(typ, -1) >= 0:
            tok_id = defaults[typ]
        if tok_id is not None and 0 <= tok_id < vocab_size:
            kvs.append(KV(key, GGUFValueType.UINT32, tok_id))
    for typ, key in (("bos", K.ADD_BOS), ("eos", K.ADD_EOS)):
        flag = tc.get(f"add_{typ}_token")
        if flag is not None and not isinstance(flag, bool):
            raise InputError(f"{src / 'tokenizer_config.json'}: add_{typ}_token must be true or "
                             f"false, got {json.dumps(flag)}")
        if not isinstance(flag, bool) and template:  # infer from TemplateProcessing, like gguf
            flag = template.get(typ) is not None and template.get(typ) == _name(tc, typ)
        if not isinstance(flag, bool):  # `silent`: the flag a file without one means
            flag = silent
        if isinstance(flag, bool):
            kvs.append(KV(key, GGUFValueType.BOOL, flag))
    chat = tc.get("chat_template")
    if not isinstance(chat, str) and (src / "chat_template.jinja").is_file():
        chat = (src / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(chat, str):
        kvs.append(KV(K.CHAT_TEMPLATE, GGUFValueType.STRING, chat))
    return kvs


def _name(tc: Mapping[str, Any], typ: str) -> str | None:
    entry = tc.get(f"{typ}_token")
    name = entry.get("content") if isinstance(entry, dict) else entry
    return name if isinstance(name, str) else None
