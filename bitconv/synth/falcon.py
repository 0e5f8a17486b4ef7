"""TII's 1.58-bit checkpoints, Falcon3-*-1.58bit and Falcon-E: their configs and tokenizers.

The Hub is unreachable from here, so each fact below names where it was read and how sure it is
(H: code or logs that target the checkpoint; M: consistent third-party copies; L: one
third-party source or our inference). The fixtures follow the facts; where a fact is missing the
fixture makes a choice and says so.

Weights (both families), shared/reference/hf.md §2 and DESIGN.md §3:
- `LlamaForCausalLM`, `model_type: llama`, plain Llama graph (SiLU, no sub-norms), untied
  `lm_head` (H: microsoft/BitNet#621; bitnet.cpp's converter LlamaModel path);
- q/k/v/o/gate/up/down stored HF-packed uint8 [out/4, in] + a one-element `weight_scale` that
  divides (onebitllms `quantize_to_1bit`: scale = 1/mean|W|, `quantization_config =
  {"modules_to_not_convert": null, "quant_method": "bitnet"}`, no linear_class) (H for the tool);
- Falcon-E's `main` is that packed layout; its revision `prequantized` holds the latent bf16
  masters that `quantize_to_1bit` turns into `main`, and `bfloat16` holds codes / weight_scale
  multiplied out in bf16 (onebitllms `convert_to_bf16`) (H: the model cards' usage sections).
  Their config.json files are unverified: the model cards load them with a plain
  `from_pretrained` (which suggests no quantization_config); the issue describes them as
  "bitlinear convention". The fixtures keep main's quantization_config (bitconv needs that
  declaration to treat float weights as BitNet: without it `pack` refuses a LlamaForCausalLM
  with one line that says to add it).
Falcon3-*-1.58bit config (tiiuae/Falcon3-*-Instruct model cards, M; third-party table, L):
  head_dim 256 written explicitly (1B: hidden 2048 = 8 heads x 256, 4 kv heads, 18 layers,
  ffn 8192), rope_theta 1000042 (an integer in the file), vocab 131072, eos 11, 8K context (1B),
  rms_norm_eps 1e-6 (L), tie_word_embeddings false.
Falcon-E config: dimensions unverified (recipes/Falcon-E-*.toml). The fixture reuses the Falcon3
  keys with rope_theta 10000 (L, our choice) and the same special ids.

Tokenizer (Falcon3; Falcon-E assumed to share its configuration, L):
- byte-level BPE `tokenizer.json`, ids 0..2023 are added tokens, mostly `>>UNUSED_n<<`
  placeholders, `<|pad|>` = 2023 (M: a third-party study of Falcon3-1B's tokenizer and
  embeddings); then the 256 GPT-2 byte symbols, "!" = 2024 (M: torchtune's Falcon3 port
  example "Hello world!" -> [13955, 3139, 2024]);
- the first specials: `>>TITLE<<` 0 … `>>IP_ADDRESS<<` 9, `<|startoftext|>` 10,
  `<|endoftext|>` 11 (eos, also config.json's bos_token_id), `>>IP_ADDRESS_0<<`..`_9<<`
  14..23, `>>PASSWORD<<` 24, `>>KEY<<` 25 (M: torchtune's FALCON3_SPECIAL_TOKENS; ids 12-13 are
  not listed there, so the fixture gives them placeholders);
- pre_tokenizer: TII's digit and punctuation splitting, Sequence[Punctuation(contiguous),
  ByteLevel(GPT-2 regex), Digits(individual)] (L: the Falcon-7B layout of llama.cpp#3502 with
  individual digits; a double space adds exactly one lone-space token under Falcon3 (M), as this
  splitter does);
- no BOS is added (M: same study), no post_processor;
- chat template `<|system|>\\n…\\n<|user|>\\n…\\n<|assistant|>\\n` with eos after assistant turns
  (M: llama.cpp's LLM_CHAT_TEMPLATE_FALCON_3 renders `<|role|>\\n content \\n`; the real template
  also has a tools branch, left out here); the role markers are plain text, not added tokens (L).
llama.cpp names: `falcon3` (mainline, convert_hf_to_gguf hash of tiiuae/Falcon3-7B-Base);
bitnet.cpp's converter writes `falcon_e` for Falcon-E (hf.md §2, commit de371b7).

The tiny fixture vocabulary keeps that order: 64 added tokens (`<|pad|>` last, at 63), bytes from
64, then merges learned on _CORPUS through the same splitter.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers

from bitconv.model.tokenizer.from_files import PRE_TOKENIZERS
from bitconv.synth.tokenizers import (
    _CORPUS,
    _added,
    _byte_chars,
    _dump,
    _learn,
    _token_map,
)

N_ADDED = 64  # the real vocabularies have 2024 added tokens (ids 0..2023)
EOS = 11
_NAMED = {0: ">>TITLE<<", 1: ">>ABSTRACT<<", 2: ">>INTRODUCTION<<", 3: ">>SUMMARY<<",
          4: ">>COMMENT<<", 5: ">>ANSWER<<", 6: ">>QUESTION<<", 7: ">>DOMAIN<<",
          8: ">>EMAIL_ADDRESS<<", 9: ">>IP_ADDRESS<<", 10: "<|startoftext|>", 11: "<|endoftext|>",
          **{14 + i: f">>IP_ADDRESS_{i}<<" for i in range(10)}, 24: ">>PASSWORD<<", 25: ">>KEY<<"}
FALCON_SPECIALS: tuple[str, ...] = tuple(
    _NAMED.get(i, f">>UNUSED_{i}<<") for i in range(N_ADDED - 1)) + ("<|pad|>",)

FALCON3_CHAT_TEMPLATE = (
    "{%- for message in messages %}\n"
    "{%- if message['role'] == 'system' %}\n{{- '<|system|>\\n' + message['content'] + '\\n' }}\n"
    "{%- elif message['role'] == 'user' %}\n{{- '<|user|>\\n' + message['content'] + '\\n' }}\n"
    "{%- elif message['role'] == 'assistant' %}\n"
    "{%- if not loop.last %}\n"
    "{{- '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}\n"
    "{%- else %}\n{{- '<|assistant|>\\n' + message['content'] + eos_token }}\n{%- endif %}\n"
    "{%- endif %}\n"
    "{%- if loop.last and add_generation_prompt %}\n{{- '<|assistant|>\\n' }}\n{%- endif %}\n"
    "{%- endfor %}")


@lru_cache(maxsize=4)
def _merges(n_new: int) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation("contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        pre_tokenizers.Digits(individual_digits=True)])
    words = Counter(tuple(piece) for piece, _ in pre.pre_tokenize_str(_CORPUS))
    return _learn(words, _byte_chars(), n_new)


def write_falcon_bpe(dst: Path, vocab_size: int) -> dict[str, int]:
    """Write a Falcon3-shaped byte-level BPE tokenizer of `vocab_size` ids into `dst`.

    Files: tokenizer.json, tokenizer_config.json (Falcon3 chat template), special_tokens_map.json.
    Returns {"bos_token_id", "eos_token_id", "vocab_size"} for config.json (both ids 11).
    """
    n_new = vocab_size - N_ADDED - 256
    if n_new < 0:
        raise ValueError(f"a Falcon BPE vocab needs >= {N_ADDED + 256} ids, got {vocab_size}")
    merges, new = _merges(n_new)
    vocab = {**{t: i for i, t in enumerate(FALCON_SPECIALS)},
             **{tok: N_ADDED + i for i, tok in enumerate((*_byte_chars(), *new))}}
    tokenizer: dict[str, Any] = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, **_added(t)} for i, t in enumerate(FALCON_SPECIALS)],
        "normalizer": None, "pre_tokenizer": PRE_TOKENIZERS["falcon3"], "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }
    eos, pad = FALCON_SPECIALS[EOS], FALCON_SPECIALS[-1]
    _dump(dst / "tokenizer.json", tokenizer)
    _dump(dst / "tokenizer_config.json", {
        "added_tokens_decoder": {str(i): _added(t) for i, t in enumerate(FALCON_SPECIALS)},
        "chat_template": FALCON3_CHAT_TEMPLATE, "clean_up_tokenization_spaces": True,
        "eos_token": eos, "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 8192,
        "pad_token": pad, "tokenizer_class": "PreTrainedTokenizerFast"}, sort_keys=True)
    _dump(dst / "special_tokens_map.json", {"eos_token": _token_map(eos),
                                            "pad_token": _token_map(pad)})
    return {"bos_token_id": EOS, "eos_token_id": EOS, "vocab_size": vocab_size}


def falcon_config(kind: str, hidden: int, inter: int, layers: int, heads: int, kv_heads: int,
                  vocab: int, tok: dict[str, int]) -> dict[str, Any]:
    """config.json of a Falcon3-*-1.58bit (`kind` "falcon3") or Falcon-E fixture."""
    return {"architectures": ["LlamaForCausalLM"], "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": tok["bos_token_id"],
            "eos_token_id": tok["eos_token_id"], "head_dim": hidden // heads, "hidden_act": "silu",
            "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": inter,
            "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
            "num_attention_heads": heads, "num_hidden_layers": layers,
            "num_key_value_heads": kv_heads, "pretraining_tp": 1,
            "quantization_config": {"modules_to_not_convert": None, "quant_method": "bitnet"},
            "rms_norm_eps": 1e-06, "rope_scaling": None,
            "rope_theta": 1000042 if kind == "falcon3" else 10000.0,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
            "vocab_size": vocab}
