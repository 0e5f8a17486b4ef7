"""verify's findings, and the metadata audit: which differences between a GGUF's keys and its
source's change what a runtime computes (`FAIL`) and which provably do not (`info`).

The runtime whose behaviour decides is llama.cpp's loader as of llama-cpp-python 0.3.36
(vendor/llama.cpp src/llama-model.cpp `load_hparams`, src/llama-vocab.cpp `load`), which
bitnet.cpp's fork shares for these keys. A key a file lacks is judged by the value that loader
uses in its place: `<arch>.rope.freq_base` 10000, `head_count_kv` = `head_count`, `key_length`
= `embedding_length / head_count`, `rope.dimension_count` = `key_length`, `vocab_size` = the
number of tokens, no rope scaling; an SPM (`llama`) vocabulary adds BOS, not EOS, and a space
prefix, with BOS 1, EOS 2, UNK 0; a BPE (`gpt2`) one adds BOS only for the Llama-3 family of
pre-tokenizers, with BOS = EOS = 11. Rules, in order:

- `general.architecture` selects the graph: FAIL. Every other `general.*` key (name, author,
  file_type, quantization_version, alignment, ...) describes the file: info; except a
  `general.name` that holds one of NAME_RULES on either side, which sets token attributes. So do a
  `bitconv.*` key (bitconv's own layout notes; the tensors themselves are compared bit for bit)
  and the order of the keys.
- A key whose effective value (its value, or the loader's default where it is missing) equals
  the source's: info. Rope scaling `none` and `linear` with factor 1 (or 0) are the same rope.
- `tokenizer.ggml.pre` of an SPM vocabulary and `tokenizer.ggml.merges` of an SPM vocabulary
  are never read (llama.cpp: "only BPE models have pre-tokenizers"; SPM merges by score):
  info, unless a pre name holds one of PRE_RULES. `tokenizer.ggml.scores` of a BPE
  vocabulary are never read (BPE merges by rank): info.
- Tokens (text, score, type per id), SPM vocabularies only: a token is *unreachable* when no
  text can make the tokenizer output it. llama.cpp's SPM session starts from single characters
  and merges two adjacent symbols only when their concatenation is a vocabulary entry (looked
  up by text, whatever its type; the score orders the merges), so an entry that cannot be split
  into two producible entries, recursively, is never produced, and its score is never read
  (both vocabularies must have unique texts: the loader asserts it). A difference at an
  unreachable id is info when (a) the token is UNUSED in both files, no special id, and neither
  text holds `<` (UNUSED tokens are not matched as specials and detokenize to nothing; llama.cpp
  recognises EOT/FIM tokens by `<...>` text): the `[PAD…]` placeholders converters write past a
  SentencePiece model; or (b) the text is the same and both types are CONTROL or UNKNOWN, which
  llama.cpp matches, tokenizes and detokenizes alike (`attr_special`; only the public
  llama_vocab_is_control() tells them apart): llama.cpp's converter types `<unk>` CONTROL with
  score -1000 where the SentencePiece model says UNKNOWN, score 0. Every other token difference
  is FAIL.
- Anything else that differs, or is missing without an equal default: FAIL.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OK, INFO, LOSS, FAIL = "ok", "info", "info loss", "FAIL"
UNUSED = 5  # llama_token_type LLAMA_TOKEN_TYPE_UNUSED
ATTR_SPECIAL = {2, 3}  # UNKNOWN, CONTROL: llama-vocab.cpp's `attr_special` in token_to_piece
LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
              "lfm2", "jina-v5-nano", "tekken", "chameleon"}  # BPE pres that set add_bos
MISSING = object()
# llama.cpp sets token attributes when the lower-cased general.name contains one of these
# (llama-vocab.cpp `load`, "set attributes by model/tokenizer/architecture name").
NAME_RULES = ("phi-3", "phi3", "modern-bert")
PRE_RULES = ("jina-v2-de", "jina-v2-es", "jina-v2-code")  # the same, by tokenizer.ggml.pre
VOCAB = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


@dataclass(frozen=True)
class Finding:
    """One line of a verify report: its class, the check, what it is about, numbers."""

    cls: str                         # ok | info | info loss | FAIL
    check: str                       # container | metadata | tensors | logits | drift
    message: str                     # self-contained: names the key or tensor
    subject: str | None = None       # the key or tensor name
    numbers: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "check": self.check, "subject": self.subject,
                "message": self.message, "numbers": dict(self.numbers)}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        seq = (list, tuple, np.ndarray)
        return (isinstance(a, seq) and isinstance(b, seq) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b)))
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        return bool(np.float32(a) == np.float32(b))  # GGUF floats are float32
    return bool(a == b)


def short(v: Any) -> str:
    if v is MISSING:
        return "missing"
    return f"a list of {len(v)}" if isinstance(v, (list, tuple, np.ndarray)) else repr(v)


def default(key: str, kvs: Mapping[str, Any]) -> Any:
    """The value llama.cpp's loader uses for `key` when a file lacks it, or MISSING."""
    arch = kvs.get("general.architecture", "")
    suffix = key.removeprefix(f"{arch}.") if arch and key.startswith(f"{arch}.") else None
    spm = kvs.get("tokenizer.ggml.model") == "llama"
    if suffix is not None:
        heads = kvs.get(f"{arch}.attention.head_count")
        head_dim = (kvs[f"{arch}.embedding_length"] // heads
                    if heads and f"{arch}.embedding_length" in kvs else MISSING)
        return {"rope.freq_base": 10000.0, "attention.head_count_kv": heads if heads else MISSING,
                "attention.key_length": head_dim, "attention.value_length": head_dim,
                "rope.dimension_count": kvs.get(f"{arch}.attention.key_length", head_dim),
                "vocab_size": len(kvs.get("tokenizer.ggml.tokens", ())) or MISSING,
                }.get(suffix, MISSING)
    pre = kvs.get("tokenizer.ggml.pre", "default")
    return {"tokenizer.ggml.add_bos_token": spm or pre in LLAMA3_PRE,
            "tokenizer.ggml.add_eos_token": False,
            "tokenizer.ggml.add_space_prefix": spm,
            "tokenizer.ggml.bos_token_id": 1 if spm else 11,
            "tokenizer.ggml.eos_token_id": 2 if spm else 11,
            "tokenizer.ggml.unknown_token_id": 0 if spm else MISSING,
            "tokenizer.ggml.pre": "default"}.get(key, MISSING)


def _rope(kvs: Mapping[str, Any], arch: str) -> tuple[str, float]:
    kind = kvs.get(f"{arch}.rope.scaling.type", "linear")
    factor = float(kvs.get(f"{arch}.rope.scaling.factor", 0.0) or 1.0)
    return ("none", 1.0) if kind in ("none", "linear") and factor == 1.0 else (kind, factor)


def audit_metadata(got: Mapping[str, Any], ref: Mapping[str, Any]) -> list[Finding]:
    """Every key of either side, classed; first an `ok` line counting the equal keys."""
    arch = str(ref.get("general.architecture", ""))
    spm = ref.get("tokenizer.ggml.model") == "llama" and got.get("tokenizer.ggml.model") == "llama"
    keys = list(ref) + sorted(set(got) - set(ref))
    out: list[Finding] = []
    equal = 0
    for key in keys:
        a, b = got.get(key, MISSING), ref.get(key, MISSING)
        if a is not MISSING and b is not MISSING and same(a, b):
            equal += 1
        elif key not in VOCAB:
            out.append(_key(key, a, b, got, ref, arch, spm))
    if any(not same(got.get(k, MISSING), ref.get(k, MISSING)) for k in VOCAB):
        out += _tokens(got, ref, spm)
    common = [k for k in got if k in ref]
    if common != [k for k in ref if k in got]:
        i = next(i for i, (x, y) in enumerate(zip(common, [k for k in ref if k in got])) if x != y)
        out.append(Finding(INFO, "metadata", f"key order differs from the source's (key #{i} is "
                                             f"{common[i]!r}); readers look keys up by name"))
    return [Finding(OK, "metadata", f"{equal} keys equal the source's",
                    numbers={"equal": equal, "keys": len(keys)}), *out]


def _key(key: str, a: Any, b: Any, got: Mapping[str, Any], ref: Mapping[str, Any], arch: str,
         spm: bool) -> Finding:
    what = (f"{key} is missing, the source gives {short(b)}" if a is MISSING else
            f"{key} is {short(a)}, the source has no such key" if b is MISSING else
            f"{key} is {short(a)}, the source gives {short(b)}")
    if key == "general.architecture" or key == "general.name" and any(
            n in str(v).lower() for v in (a, b) if v is not MISSING for n in NAME_RULES):
        return Finding(FAIL, "metadata", what, key)
    if key.startswith(("general.", "bitconv.")):
        return Finding(INFO, "metadata", f"{what} (descriptive)", key)
    if spm and key in ("tokenizer.ggml.pre", "tokenizer.ggml.merges") and not any(
            n in str(v) for v in (a, b) if v is not MISSING for n in PRE_RULES):
        return Finding(INFO, "metadata", f"{what} (an SPM vocabulary never reads it)", key)
    if key.startswith(f"{arch}.rope.scaling.") and _rope(got, arch) == _rope(ref, arch):
        return Finding(INFO, "metadata", f"{what} (the same rope: no scaling)", key)
    ea = default(key, got) if a is MISSING else a
    eb = default(key, ref) if b is MISSING else b
    if ea is not MISSING and eb is not MISSING and same(ea, eb):
        return Finding(INFO, "metadata", f"{what} (the runtime's default, {short(ea)}, "
                                         "is the same)", key)
    if a is MISSING and ea is not MISSING:
        what += f" (the runtime's default is {short(ea)})"
    elif b is MISSING and eb is not MISSING:
        what += f" (the runtime's default is {short(eb)})"
    return Finding(FAIL, "metadata", what, key)


def _tokens(got: Mapping[str, Any], ref: Mapping[str, Any], spm: bool) -> list[Finding]:
    """Per-token comparison of (text, score, type), classed by the placeholder rule above."""
    key = "tokenizer.ggml.tokens"
    ta, tb = list(got.get(key, ())), list(ref.get(key, ()))
    if len(ta) != len(tb):
        return [Finding(FAIL, "metadata", f"{key} is {short(ta)}, the source gives {short(tb)}",
                        key, {"tokens": len(ta), "source_tokens": len(tb)})]
    n = len(ta)
    sa, sb = (_column(kv, "tokenizer.ggml.scores", n, 0.0) for kv in (got, ref))
    ya, yb = (_column(kv, "tokenizer.ggml.token_type", n, 1) for kv in (got, ref))
    out = []
    if not spm and not same(got.get(VOCAB[1], MISSING), ref.get(VOCAB[1], MISSING)):
        out.append(Finding(INFO, "metadata", f"{VOCAB[1]} is {short(got.get(VOCAB[1], MISSING))}, "
                                             f"the source gives {short(ref.get(VOCAB[1], MISSING))}"
                                             " (a BPE vocabulary never reads scores)", VOCAB[1]))
        sa = sb  # BPE merges by rank
    diff = [i for i in range(n) if ta[i] != tb[i] or not same(sa[i], sb[i]) or ya[i] != yb[i]]
    specials = {int(v) for kv in (got, ref) for k, v in kv.items()
                if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")}
    va, vb = _Vocab(ta), _Vocab(tb)
    unread = [i for i in diff if spm and va.unreachable(ta[i]) and vb.unreachable(tb[i])]
    holders = [i for i in unread if ya[i] == yb[i] == UNUSED and i not in specials
               and "<" not in ta[i] + tb[i]]
    alike = [i for i in unread if ta[i] == tb[i] and {int(ya[i]), int(yb[i])} <= ATTR_SPECIAL]
    bad = [i for i in diff if i not in set(holders + alike)]
    if bad:
        i = bad[0]
        out.append(Finding(FAIL, "metadata", f"{key}: {len(bad)} token(s) differ, first #{i}: "
                                             f"{_tok(ta[i], sa[i], ya[i])}, the source gives "
                                             f"{_tok(tb[i], sb[i], yb[i])}",
                           key, {"count": len(bad), "ids": bad[:64]}))
    if holders:
        i = holders[0]
        out.append(Finding(INFO, "metadata", f"{key}: {len(holders)} unused placeholder "
                                             f"token(s) differ, first #{i}: {ta[i]!r}, the source "
                                             f"gives {tb[i]!r} (type UNUSED, no SPM merge can "
                                             "produce either text)", key,
                           {"count": len(holders), "ids": holders[:64]}))
    if alike:
        i = alike[0]
        out.append(Finding(INFO, "metadata", f"{key}: {len(alike)} special token(s) differ in "
                                             f"type or score only, first #{i}: "
                                             f"{_tok(ta[i], sa[i], ya[i])}, the source gives "
                                             f"{_tok(tb[i], sb[i], yb[i])} (CONTROL and UNKNOWN "
                                             "tokenize and detokenize alike; no SPM merge "
                                             "produces the text, so its score is never read)",
                           key, {"count": len(alike), "ids": alike[:64]}))
    return out


def _column(kv: Mapping[str, Any], key: str, n: int, fill: float) -> Sequence[Any]:
    v = kv.get(key)
    return list(v) if v is not None and len(v) == n else [fill] * n


def _tok(text: str, score: Any, kind: Any) -> str:
    return f"{text!r} (score {float(score):g}, type {int(kind)})"


class _Vocab:
    """Which texts llama.cpp's SPM tokenizer can output from this vocabulary (see the module
    docstring): a single character that is an entry, or an entry that splits into two such."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = set(texts)
        self.dups = len(self.texts) != len(texts)
        self.memo: dict[str, bool] = {}

    def producible(self, s: str) -> bool:
        if s not in self.texts:
            return False
        if s not in self.memo:
            self.memo[s] = False  # no cycles: parts are strictly shorter
            self.memo[s] = len(s) <= 1 or any(
                self.producible(s[:i]) and self.producible(s[i:]) for i in range(1, len(s)))
        return self.memo[s]

    def unreachable(self, s: str) -> bool:
        return not self.dups and s != "" and not self.producible(s)
