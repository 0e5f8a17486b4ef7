"""Tokenizer files rebuilt from GGUF `tokenizer.*` metadata: the inverse of from_files.py.

`repack --format hf` writes them into a checkpoint directory, and the runtime tokenizes a GGUF
file with the same builders (runtime/text.py). They are chosen so that `tokenizer_kvs` (what
`pack` reads) gives back the metadata they came from, key for key, for the files bitconv writes:
- `llama` (SentencePiece): tokenizer.model with every token as a piece, its score and its type
  (GGUF's token types use SentencePiece's numbering), LLaMA's normalizer;
- `gpt2` + pre `llama-bpe` / `falcon3`: a byte-level BPE tokenizer.json with that name's
  pre_tokenizer configuration (tokenizer.PRE_TOKENIZERS: Llama-3's Split regex, or TII's
  Punctuation + ByteLevel + Digits); `falcon_e` (bitnet.cpp's name for Falcon-E) is written as
  `falcon3`, the same configuration, and `repack` reports the changed pre name. Every token is in
  the model vocab, so each keeps its id in any reader (`tokenizers` ignores the ids of added
  tokens that are not); CONTROL and USER_DEFINED tokens are added tokens too, matched whole;
- trailing `[PAD{i}]` placeholders are left out: `pack` pads the list to vocab_size again;
- tokenizer_config.json names the special tokens (where a name is unique), carries the
  add_bos/add_eos flags the metadata has and the chat template; config.json gets the ids.
A BPE vocabulary with a placeholder inside it comes back with that token NORMAL: `repack`
reports every key a written directory does not give back.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bitconv.errors import InputError
from bitconv.gguf_values import TokenType
from bitconv.model.tokenizer.from_files import (
    PAD_SCORE,
    PRE_TOKENIZERS,
    RUNTIME_SPLIT,
    pad_name,
    spm_pb2,
)

_SPECIALS = ("bos", "eos", "unk", "pad")
_IDS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
        "pad": "padding_token_id"}  # tokenizer.ggml.* key suffixes (gguf_values.TokenizerKeys)
_ADDED = (TokenType.CONTROL, TokenType.USER_DEFINED)


@dataclass(frozen=True)
class TokenizerFiles:
    files: dict[str, bytes]  # file name -> content
    config: dict[str, int]  # the `*_token_id` keys config.json should carry


def spm_proto(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> Any:
    """A SentencePiece BPE ModelProto holding `tokens` as pieces, with LLaMA's normalizer
    (dummy prefix, ▁ for spaces, no whitespace folding) and byte fallback iff BYTE pieces exist."""
    pb2 = spm_pb2()
    proto = pb2.ModelProto()
    for t, s, ty in zip(tokens, scores, types):
        proto.pieces.add(piece=t, score=s, type=ty)
    ts = proto.trainer_spec
    ts.model_type = pb2.TrainerSpec.BPE
    ts.byte_fallback = any(ty == TokenType.BYTE for ty in types)
    ts.unk_id = next((i for i, ty in enumerate(types) if ty == TokenType.UNKNOWN), 0)
    ns = proto.normalizer_spec
    ns.name, ns.add_dummy_prefix, ns.remove_extra_whitespaces = "identity", True, False
    ns.escape_whitespaces = True
    return proto


def bpe_json(tokens: Sequence[str], types: Sequence[int], merges: Sequence[str],
             post_processor: Mapping[str, Any] | None = None, pre: str = "llama-bpe",
             runtime: bool = False) -> dict[str, Any]:
    """A byte-level BPE tokenizer.json (`tokenizers` format); CONTROL / USER_DEFINED tokens as
    added tokens matched whole. The pre-tokenizer is GGUF name `pre`'s tokenizer.json
    configuration, or with `runtime` the split llama.cpp runs for that name (RUNTIME_SPLIT,
    then ByteLevel, whole-piece vocab hits first as its `ignore_merges`)."""
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == TokenType.CONTROL}
             for i, t in enumerate(tokens) if types[i] in _ADDED]
    if runtime:
        split = {"type": "Split", "pattern": {"Regex": RUNTIME_SPLIT[pre]},
                 "behavior": "Isolated", "invert": False}
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": False}
        pre_tok: dict[str, Any] = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    else:
        pre_tok = PRE_TOKENIZERS["falcon3" if pre == "falcon_e" else pre]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tok,
        "post_processor": dict(post_processor) if post_processor else None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": runtime or pre == "llama-bpe",
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }


def tokenizer_files(kvs: Mapping[str, Any], max_length: int) -> TokenizerFiles:
    """The tokenizer files of a checkpoint directory, from GGUF metadata `kvs`.

    Raises InputError for a tokenizer bitconv cannot write (another model or pre-tokenizer).

    Example:
        >>> sorted(tokenizer_files(read_gguf("m-i2s.gguf").kvs, 4096).files)
        ['tokenizer.json', 'tokenizer_config.json']
    """
    model, pre = kvs.get("tokenizer.ggml.model"), kvs.get("tokenizer.ggml.pre")
    tokens = [str(t) for t in kvs.get("tokenizer.ggml.tokens", [])]
    types = [int(t) for t in kvs.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens))]
    ids = {typ: int(kvs[f"tokenizer.ggml.{k}"]) for typ, k in _IDS.items()
           if f"tokenizer.ggml.{k}" in kvs}
    scores = [float(s) for s in kvs.get("tokenizer.ggml.scores", [PAD_SCORE] * len(tokens))]
    n = _kept(tokens, types, scores, max(ids.values(), default=-1) + 1)
    if model == "llama":
        main = {"tokenizer.model": _spm_model(tokens[:n], scores[:n], types[:n], ids)}
        tc: dict[str, Any] = {"tokenizer_class": "LlamaTokenizer", "legacy": False}
    elif model == "gpt2" and pre in RUNTIME_SPLIT:
        merges = [str(m) for m in kvs.get("tokenizer.ggml.merges", [])]
        tj = bpe_json(tokens[:n], types[:n], merges, _template(kvs, tokens, ids), str(pre))
        main = {"tokenizer.json": _dumps(tj)}
        tc = {"tokenizer_class": "PreTrainedTokenizerFast"}
    else:
        raise InputError(f"tokenizer {model!r} with pre-tokenizer {pre!r} cannot be written as "
                         "tokenizer files (bitconv writes SentencePiece 'llama' and 'gpt2' "
                         f"with pre {', '.join(sorted(RUNTIME_SPLIT))})")
    lookup = {t: i for i, t in enumerate(tokens)}  # as tokenizer_kvs looks names up: last wins
    tc.update({f"{typ}_token": tokens[i] for typ, i in ids.items()
               if 0 <= i < len(tokens) and lookup[tokens[i]] == i})
    tc.update({f"add_{typ}_token": bool(kvs[f"tokenizer.ggml.add_{typ}_token"])
               for typ in ("bos", "eos") if f"tokenizer.ggml.add_{typ}_token" in kvs})
    if "tokenizer.chat_template" in kvs:
        tc["chat_template"] = str(kvs["tokenizer.chat_template"])
    tc.update(clean_up_tokenization_spaces=False, model_max_length=max_length)
    config = {f"{typ}_token_id": ids[typ] for typ in ("bos", "eos", "pad") if typ in ids}
    return TokenizerFiles({**main, "tokenizer_config.json": _dumps(tc)}, config)


def _kept(tokens: list[str], types: list[int], scores: list[float], at_least: int) -> int:
    """How many tokens to write: all but the trailing placeholders `pack` adds back."""
    n = len(tokens)
    while (n > at_least and types[n - 1] == TokenType.UNUSED and tokens[n - 1] == pad_name(n - 1)
           and scores[n - 1] == PAD_SCORE):
        n -= 1
    return n


def _spm_model(tokens: list[str], scores: list[float], types: list[int],
               ids: Mapping[str, int]) -> bytes:
    proto = spm_proto(tokens, scores, types)
    ts = proto.trainer_spec
    unk = ids.get("unk", -1)
    if 0 <= unk < len(types) and types[unk] == TokenType.UNKNOWN:
        ts.unk_id = unk
    # the trainer's ids are what tokenizer_kvs falls back to: none where the metadata has none
    ts.bos_id, ts.eos_id, ts.pad_id = (ids.get(t, -1) for t in ("bos", "eos", "pad"))
    from sentencepiece import SentencePieceProcessor

    data: bytes = proto.SerializeToString()
    try:
        SentencePieceProcessor(model_proto=data)
    except RuntimeError as e:
        raise InputError(f"tokenizer metadata is not a valid SentencePiece model ({e})") from None
    return data


def _template(kvs: Mapping[str, Any], tokens: list[str],
              ids: Mapping[str, int]) -> dict[str, Any] | None:
    """The TemplateProcessing that adds BOS/EOS, as Llama-3's tokenizer.json has. Only when the
    metadata has both add_* flags: tokenizer_kvs would read a template as the missing one."""
    flags = [kvs.get(f"tokenizer.ggml.add_{t}_token") for t in ("bos", "eos")]
    ends = [t for t, f in zip(("bos", "eos"), flags) if f and t in ids]
    if None in flags or not ends:
        return None

    def seq(name: str, type_id: int) -> list[dict[str, Any]]:
        special = [{"SpecialToken": {"id": tokens[ids[t]], "type_id": type_id}} for t in ends]
        body = [{"Sequence": {"id": name, "type_id": type_id}}]
        return special[:1] + body + special[1:] if ends[0] == "bos" else body + special

    return {"type": "TemplateProcessing", "single": seq("A", 0), "pair": seq("A", 0) + seq("B", 1),
            "special_tokens": {tokens[ids[t]]: {"id": tokens[ids[t]], "ids": [ids[t]],
                                                "tokens": [tokens[ids[t]]]} for t in ends}}


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
