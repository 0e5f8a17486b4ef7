"""Text <-> token ids for `run` and `logits -p`.

A checkpoint directory is tokenized by its own files (tokenizer.json through `tokenizers`,
tokenizer.model through `sentencepiece`); a GGUF file by a tokenizer rebuilt from its
`tokenizer.*` metadata, the way llama.cpp reads it (llama-cpp.md §3.6), by the builders that
`repack --format hf` writes tokenizer files with (model/tokenizer/to_files.py):
- `gpt2` (byte-level BPE): vocab + merges, the split regex llama.cpp runs for the file's
  `tokenizer.ggml.pre` (tokenizer.RUNTIME_SPLIT: Llama-3's for `llama-bpe`, `falcon3` and
  `falcon_e`; other names are refused, not guessed), CONTROL/USER_DEFINED tokens matched whole;
- `llama` (SentencePiece BPE): a ModelProto rebuilt from tokens, scores and token types (GGUF's
  token types use SentencePiece's numbering), with LLaMA's normalizer (dummy prefix, ▁ spaces).
BOS is added when `tokenizer.ggml.add_bos_token` (or the checkpoint's tokenizer config) says so;
the chat template is rendered with jinja2 as transformers does (sandboxed, trim/lstrip blocks).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitconv.errors import InputError
from bitconv.gguf_values import TokenType
from bitconv.model.tokenizer.from_files import RUNTIME_SPLIT, spm_pb2
from bitconv.model.tokenizer.to_files import bpe_json, spm_proto


@dataclass(frozen=True)
class TextCodec:
    encode_raw: Callable[[str], list[int]]  # text -> ids, special tokens matched, no BOS
    decode_raw: Callable[[Sequence[int]], str]
    bos_id: int | None
    add_bos: bool
    eog_ids: frozenset[int]  # ids that end a generation (eos, eot)
    chat_template: str | None
    bos_token: str
    eos_token: str

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.encode_raw(text)
        bos = self.add_bos if add_bos is None else add_bos
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_raw(list(ids))

    def chat(self, prompt: str) -> list[int]:
        """One user turn rendered by the model's chat template, ready for the reply."""
        if self.chat_template is None:
            raise InputError("the model has no chat template; run without --chat")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            text = env.from_string(self.chat_template).render(
                messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
                bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as e:
            raise InputError(f"the chat template fails to render: {e}") from None
        return self.encode(text, add_bos=False)  # templates write their own BOS


def load_text_codec(path: str | Path, kvs: Mapping[str, Any]) -> TextCodec:
    """The tokenizer of a checkpoint directory (its files) or of a GGUF file (its metadata kvs)."""
    path = Path(path)
    if path.is_dir():
        return _from_files(path, kvs)
    return _from_kvs(kvs)


def _from_kvs(kvs: Mapping[str, Any]) -> TextCodec:
    model = kvs.get("tokenizer.ggml.model")
    tokens = [str(t) for t in kvs.get("tokenizer.ggml.tokens", [])]
    types = [int(t) for t in kvs.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens))]
    if model == "gpt2":
        pre = str(kvs.get("tokenizer.ggml.pre", "default"))
        if pre not in RUNTIME_SPLIT:
            raise InputError(f"tokenizer.ggml.pre {pre!r} is not one bitconv can tokenize "
                             f"(it knows {', '.join(sorted(RUNTIME_SPLIT))})")
        enc, dec = _bpe(tokens, types, [str(m) for m in kvs["tokenizer.ggml.merges"]], pre)
    elif model == "llama":
        enc, dec = _spm(tokens, [float(s) for s in kvs["tokenizer.ggml.scores"]], types)
    else:
        raise InputError(f"tokenizer.ggml.model {model!r} is not one bitconv can read")
    return _codec(enc, dec, tokens, types, kvs)


def _codec(enc: Callable[[str], list[int]], dec: Callable[[Sequence[int]], str],
           tokens: list[str], types: list[int], kvs: Mapping[str, Any]) -> TextCodec:
    bos = kvs.get("tokenizer.ggml.bos_token_id")
    eos = kvs.get("tokenizer.ggml.eos_token_id")
    eog = {int(eos)} if eos is not None else set()
    eog |= {i for i, t in enumerate(tokens) if t in ("<|eot_id|>", "<|end_of_text|>", "</s>")
            and types[i] == TokenType.CONTROL}
    return TextCodec(enc, dec, None if bos is None else int(bos),
                     bool(kvs.get("tokenizer.ggml.add_bos_token", bos is not None)),
                     frozenset(eog), kvs.get("tokenizer.chat_template"),
                     tokens[int(bos)] if bos is not None else "",
                     tokens[int(eos)] if eos is not None else "")


def _bpe(tokens: list[str], types: list[int], merges: list[str],
         pre: str) -> tuple[Callable[[str], list[int]], Callable[[Sequence[int]], str]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(bpe_json(tokens, types, merges, pre=pre, runtime=True)))
    if any(tok.token_to_id(t) != i for i, t in enumerate(tokens)
           if types[i] in (TokenType.CONTROL, TokenType.USER_DEFINED)):
        raise InputError("tokenizer metadata has duplicate special tokens")
    return (lambda s: tok.encode(s, add_special_tokens=False).ids,
            lambda ids_: tok.decode(list(ids_), skip_special_tokens=False))


def _spm(tokens: list[str], scores: list[float],
         types: list[int]) -> tuple[Callable[[str], list[int]], Callable[[Sequence[int]], str]]:
    return _spm_codec(spm_proto(tokens, scores, types))


def _spm_codec(proto: Any) -> tuple[Callable[[str], list[int]], Callable[[Sequence[int]], str]]:
    """SentencePiece with control/user-defined pieces matched whole in the text first, as
    transformers and llama.cpp do (plain sentencepiece would spell `</s>` out byte by byte).
    Only the text before any special token gets the dummy-prefix space (transformers'
    non-legacy Llama behaviour)."""
    from sentencepiece import SentencePieceProcessor

    first = SentencePieceProcessor(model_proto=proto.SerializeToString())
    proto.normalizer_spec.add_dummy_prefix = False
    rest = SentencePieceProcessor(model_proto=proto.SerializeToString())
    special = {p.piece: i for i, p in enumerate(proto.pieces)
               if p.type in (TokenType.CONTROL, TokenType.USER_DEFINED) and p.piece}
    split = re.compile("(" + "|".join(map(re.escape, sorted(special, key=len, reverse=True)))
                       + ")") if special else None

    def encode(text: str) -> list[int]:
        parts = split.split(text) if split else [text]
        ids: list[int] = []
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(special[part])
            elif part:
                ids += (first if k == 0 else rest).encode(part)
        return ids

    return encode, lambda ids: first.decode(list(ids))


def _from_files(src: Path, kvs: Mapping[str, Any]) -> TextCodec:
    """A checkpoint's own tokenizer files; special ids and flags from the same metadata `pack`
    writes (so a checkpoint and its packed file agree on BOS/EOS by construction)."""
    tokens = [str(t) for t in kvs["tokenizer.ggml.tokens"]]
    types = [int(t) for t in kvs["tokenizer.ggml.token_type"]]
    if (src / "tokenizer.model").is_file():
        proto = spm_pb2().ModelProto()
        proto.ParseFromString((src / "tokenizer.model").read_bytes())
        return _codec(*_spm_codec(proto), tokens, types, kvs)
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for unreadable files
        raise InputError(f"{src / 'tokenizer.json'}: {e}") from None
    return _codec(lambda s: tok.encode(s, add_special_tokens=False).ids,
                  lambda ids: tok.decode(list(ids), skip_special_tokens=False), tokens, types, kvs)
