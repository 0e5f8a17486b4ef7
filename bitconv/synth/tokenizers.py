"""Tiny but real tokenizer files, in the layouts of the BitNet b1.58 repos (reference/hf.md §2).

- `write_llama3_bpe`: Llama-3 byte-level BPE `tokenizer.json` (microsoft/bitnet-b1.58-2B-4T,
  HF1BitLLM/Llama3-8B-1.58-100B-tokens).
- `write_llama2_spm`: LLaMA-2 SentencePiece `tokenizer.model` (1bitLLM/bitnet_b1_58-*).

Merges are learned from `_CORPUS` by a greedy pair counter: the most frequent adjacent pair wins,
ties go to the lexicographically smallest pair. Nothing is random: every run writes the same bytes.
"""
from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, pre_tokenizers

from bitconv.model.tokenizer.from_files import LLAMA3_SPLIT

spm_pb2: Any = sentencepiece_model_pb2  # generated protobuf code: no static attributes

_CORPUS = """\
Hello world, how are you? I am fine, thank you, and how are you today?
The quick brown fox jumps over the lazy dog, and the dog does not move at all.
A small model can still learn to read and write if the words are simple and the rules are clear.
We wrote this text for a tokenizer: it should see common English words many times over.
Every morning the sun rises in the east and sets in the west; the days grow longer in spring.
She said that they would come back later, but nobody knew when they would arrive.
There is a house on the hill with a red door, two windows and a garden full of flowers.
Numbers such as 1, 2, 3, 10, 42, 100 and 2024 appear in sentences about time and money.
"Where are you going?" asked the child. "To the market," said her mother, "to buy some bread."
Learning takes time. Practice every day, read good books, and ask questions when you are lost.
The weather was cold and windy, so we stayed inside, made tea, and talked about old friends.
Can you help me find my keys? I think I left them on the kitchen table near the window.
People often say that the best things in life are free, like friendship, laughter and sleep.
This is the first line of a story about a little robot who wanted to understand the world.
The robot walked through the city, looked at the tall buildings and listened to the people.
He learned that words have meaning, that numbers have order, and that questions have answers.
When the night came, the robot sat down under a tree and thought about everything it had seen.
Thank you for reading. Have a good day, and see you again tomorrow morning at the same place!
In the library, students were writing notes, checking facts and comparing different sources.
Our teacher explained why water freezes, why ice floats, and why the ocean tastes of salt.
Music filled the street while children played games, dogs barked and bicycles rang their bells.
If you mix yellow and blue you get green; if you mix red and white you get a soft pink color.
My brother works in a hospital, where doctors and nurses care for patients during long shifts.
The train leaves the station at seven, crosses the river, and reaches the mountains by noon.
Farmers grow wheat, corn, apples and potatoes, then carry their harvest to villages nearby.
Good software is simple: each function does one thing, every error says what went wrong.
Please open the box carefully, because the glass inside is thin and could break very easily.
During winter the birds fly south, and during summer they return to build their small nests.
Scientists measure light, sound, heat and weight with careful instruments and patient work.
Which language do you speak at home? We speak English, but my grandmother speaks French.
Yesterday I visited a museum with paintings, statues, ancient coins and a huge dinosaur skeleton.
Quiet evenings are my favorite: a warm blanket, a cup of cocoa, and a journal to write in.
Jack quickly packed five dozen jugs of liquid wax; vexed zebras just hopped over the fence.
"""


# Meta-Llama-3 (3.0) special tokens, in id order: the list in meta-llama/llama3
# `llama/tokenizer.py` (Tokenizer.__init__, num_reserved_special_tokens = 256), which the 2B4T and
# HF1BitLLM tokenizers reuse unchanged at ids 128000..128255. Here they take the LAST 256 ids.
LLAMA3_SPECIALS: tuple[str, ...] = (
    "<|begin_of_text|>", "<|end_of_text|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(4)),
    "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(5, 251)),
)

# The chat template of microsoft/bitnet-b1.58-2B-4T's tokenizer_config.json, rebuilt from
# third-party quotes (the Hub is unreachable): Llama-3's template with `Role: ` in place of the
# header tokens, giving `<|begin_of_text|>System: …<|eot_id|>User: …<|eot_id|>Assistant: `.
# llama.cpp's "bitnet" chat format (src/llama-chat.cpp) renders the same string.
BITNET_2B4T_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct's chat template (tokenizer_config.json): header tokens around the role,
# a blank line, the trimmed content and <|eot_id|>; BOS before the first message.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# 1bitLLM's config.json says vocab_size 32002 = 32000 SentencePiece pieces + 2 ids. The only
# evidence about them is `padding_idx=32000` (pad_token_id), so we assume `<pad>` at the first
# extra id, listed in added_tokens.json, and leave the second id unnamed by any file: an embedding
# row with no token, which converters must pad (llama.cpp: `[PAD{i}]`, UNUSED). None marks a hole.
SPM_ADDED: tuple[str | None, ...] = ("<pad>", None)

_LARGE = 1000000000000000019884624838656  # transformers' VERY_LARGE_INTEGER, as in Llama tokenizers


@lru_cache(maxsize=1)
def _byte_chars() -> tuple[str, ...]:
    """GPT-2 `bytes_to_unicode`, in its order: the id order of Llama-3's 256 byte tokens."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:  # the 68 unprintable bytes map to U+0100..U+0143, in byte order
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return tuple(chr(c) for c in cs)


def _learn(words: Counter[tuple[str, ...]], alphabet: tuple[str, ...],
           n_new: int) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Greedy BPE: (merges in rank order, the n_new new tokens in creation order)."""
    known = set(alphabet)
    merges: list[tuple[str, str]] = []
    new: list[str] = []
    table = dict(words)
    while len(new) < n_new:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in table.items():
            for pair in pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        if best[0] + best[1] not in known:  # two merges may build the same string: one token
            known.add(best[0] + best[1])
            new.append(best[0] + best[1])
        table = {_merge(word, best): count for word, count in table.items()}
    # Corpus exhausted: pad with pairs of alphabet symbols, in alphabet order.
    for a in alphabet:
        for b in alphabet:
            if len(new) < n_new and a + b not in known:
                merges.append((a, b))
                known.add(a + b)
                new.append(a + b)
    if len(new) < n_new:
        raise ValueError(f"cannot build {n_new} tokens from the embedded corpus")
    return tuple(merges), tuple(new)  # immutable: the callers' results are cached


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


@lru_cache(maxsize=8)
def _bpe_merges(n_new: int) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    words = Counter(tuple(piece) for piece, _ in pre.pre_tokenize_str(_CORPUS))
    return _learn(words, _byte_chars(), n_new)


def _added(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def _dump(path: Path, obj: Any, sort_keys: bool = False) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n"
    path.write_bytes(text.encode("utf-8"))


def write_llama3_bpe(dst: Path, vocab_size: int,
                     learned: tuple[tuple[tuple[str, str], ...], tuple[str, ...]] | None = None,
                     chat_template: str = BITNET_2B4T_CHAT_TEMPLATE) -> dict[str, int]:
    """Write a Llama-3-shaped byte-level BPE tokenizer of `vocab_size` ids into `dst`.

    Ids: 256 byte tokens (GPT-2 order), learned merges, then the 256 Llama-3 specials at the end.
    Files: tokenizer.json, tokenizer_config.json (2B4T chat template unless `chat_template`),
    special_tokens_map.json. `learned` = (merges in rank order, the vocab_size - 512 new tokens)
    replaces the embedded corpus's merges (scripts/train_tiny.py trains them with `tokenizers`).

    Returns:
        {"bos_token_id", "eos_token_id", "vocab_size"} for config.json. eos is <|end_of_text|>;
        2B4T's chat turns end with <|eot_id|> (vocab_size - 247), which llama.cpp treats as EOG.
    """
    n_new = vocab_size - 2 * 256
    if n_new < 0:
        raise ValueError(f"a Llama-3 BPE vocab needs >= 512 ids, got {vocab_size}")
    merges, new = _bpe_merges(n_new) if learned is None else learned
    if len(new) != n_new:
        raise ValueError(f"{len(new)} learned tokens for {n_new} free ids")
    vocab = {tok: i for i, tok in enumerate((*_byte_chars(), *new))}
    first = vocab_size - 256
    bos, eos = LLAMA3_SPECIALS[0], LLAMA3_SPECIALS[1]
    tmpl = [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": first + i, **_added(t)} for i, t in enumerate(LLAMA3_SPECIALS)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing", "single": tmpl,
             "pair": tmpl + [{"SpecialToken": {"id": bos, "type_id": 1}},
                             {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [first], "tokens": [bos]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }
    _dump(dst / "tokenizer.json", tokenizer)
    _dump(dst / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(first + i): _added(t) for i, t in enumerate(LLAMA3_SPECIALS)},
        "bos_token": bos, "chat_template": chat_template,
        "clean_up_tokenization_spaces": True, "eos_token": eos,
        "model_input_names": ["input_ids", "attention_mask"],
        # 2B4T's context length; the real file's value is unverified.
        "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast"}, sort_keys=True)
    _dump(dst / "special_tokens_map.json",
          {"bos_token": _token_map(bos), "eos_token": _token_map(eos)})
    return {"bos_token_id": first, "eos_token_id": first + 1, "vocab_size": vocab_size}


@lru_cache(maxsize=8)
def _spm_pieces(n_free: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(merged pieces in rank order, the single characters), n_free pieces in total."""
    words = Counter(tuple("▁" + w) for w in _CORPUS.split())
    chars = tuple(sorted({c for w in words for c in w}))
    if n_free < len(chars):
        raise ValueError(f"a synthetic SPM vocab needs {len(chars)} character pieces")
    _, new = _learn(words, chars, n_free - len(chars))
    return new, chars


def write_llama2_spm(dst: Path, vocab_size: int) -> dict[str, int]:
    """Write a LLaMA-2-shaped SentencePiece BPE tokenizer into `dst`.

    `vocab_size` is the model's (config.json) vocab: the last len(SPM_ADDED) ids are beyond the
    SentencePiece model, like 1bitLLM's 32002 = 32000 + 2. Pieces: <unk> <s> </s>, <0x00>..<0xFF>,
    learned `▁`-pieces with scores 0, -1, -2, ..., then single characters (as SentencePiece's BPE
    trainer orders them). Files: tokenizer.model, tokenizer_config.json, special_tokens_map.json,
    added_tokens.json.

    Returns:
        {"bos_token_id", "eos_token_id", "pad_token_id", "vocab_size"} for config.json.
    """
    n_spm = vocab_size - len(SPM_ADDED)
    merged, chars = _spm_pieces(n_spm - 3 - 256)
    proto = spm_pb2.ModelProto()
    kind = spm_pb2.ModelProto.SentencePiece
    specials = [("<unk>", kind.UNKNOWN), ("<s>", kind.CONTROL), ("</s>", kind.CONTROL)]
    for piece, typ in specials + [(f"<0x{b:02X}>", kind.BYTE) for b in range(256)]:
        proto.pieces.add(piece=piece, score=0.0, type=typ)
    for rank, piece in enumerate((*merged, *chars)):
        proto.pieces.add(piece=piece, score=float(-rank), type=kind.NORMAL)
    # Trainer and normalizer settings of LLaMA-2's tokenizer.model (meta-llama/Llama-2-7b-hf).
    proto.trainer_spec.MergeFrom(spm_pb2.TrainerSpec(
        input_format="text", model_prefix="bitconv-synth", model_type=spm_pb2.TrainerSpec.BPE,
        vocab_size=n_spm, character_coverage=0.99995, max_sentencepiece_length=16,
        split_digits=True, allow_whitespace_only_pieces=True, byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1))
    proto.normalizer_spec.MergeFrom(spm_pb2.NormalizerSpec(
        name="identity", precompiled_charsmap=b"", add_dummy_prefix=True,
        remove_extra_whitespaces=False, escape_whitespaces=True))
    (dst / "tokenizer.model").write_bytes(proto.SerializeToString(deterministic=True))

    added = {t: n_spm + i for i, t in enumerate(SPM_ADDED) if t is not None}
    decoder = {str(i): _added(t) for i, (t, _) in enumerate(specials)}
    decoder |= {str(i): _added(t) for t, i in added.items()}
    _dump(dst / "added_tokens.json", added)
    # Llama-2-7b-hf's tokenizer_config.json keys. The real 1bitLLM file names "BitnetTokenizer"
    # (remote code, a LlamaTokenizer copy); we name the built-in class so no remote code is needed.
    _dump(dst / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>",
        "legacy": False, "model_max_length": _LARGE, "pad_token": "<pad>",
        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>", "use_default_system_prompt": False}, sort_keys=True)
    _dump(dst / "special_tokens_map.json", {
        "bos_token": _token_map("<s>"), "eos_token": _token_map("</s>"),
        "pad_token": _token_map("<pad>"), "unk_token": _token_map("<unk>")})
    return {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": added["<pad>"],
            "vocab_size": vocab_size}


def _token_map(content: str) -> dict[str, Any]:
    return {k: v for k, v in _added(content).items() if k != "special"}
