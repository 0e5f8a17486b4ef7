"""The GGUF numbers and names bitconv writes and reads, defined here so nothing imports gguf-py.

`import gguf` costs about 40 ms (it loads yaml, sentencepiece, logging, its vocab and metadata
helpers) and bitconv used only three enums from it. This module holds exactly what bitconv uses,
with no imports beyond the standard library, so every layer may use it (it sits in the base
layer with `types`, whose KV record names GGUFValueType).

Provenance (tests/test_gguf_values.py checks every value against the installed gguf package and,
where llama-cpp-python is installed, against the ggml.h, gguf.h and llama.h it ships):
- GGUFValueType: the GGUF specification, ggml-org/ggml docs/gguf.md `enum gguf_metadata_value_type`
  (= ggml's gguf.h `enum gguf_type`, gguf-py gguf/constants.py `class GGUFValueType`).
- TokenType: the numbering of `tokenizer.ggml.token_type` (docs/gguf.md: 1 normal .. 6 byte;
  = llama.cpp include/llama.h `enum llama_token_type`, gguf-py `class TokenType`). SentencePiece's
  ModelProto piece types share it (sentencepiece_model.proto), which from_files.py relies on.
- TokenizerKeys: the `tokenizer.*` metadata keys of docs/gguf.md "Tokenizer" (= gguf-py
  `Keys.Tokenizer`), only those bitconv writes or reads by name.
- GGMLType: ggml tensor type ids, `enum ggml_type` in ggml/include/ggml.h (= gguf-py
  `GGMLQuantizationType`) for F32..TQ2_0 and Q1_0; Q2_0 = 42 is mainline llama.cpp's
  (ggml-org/llama.cpp@0c1e57098 ggml/include/ggml.h L431-432), newer than gguf 0.19.0; I2_S = 36,
  TL1 = 38, TL2 = 39 are bitnet.cpp's fork (Eddie-Wang1120/llama.cpp ggml/include/ggml.h
  L393-396): upstream retired 36-38 and gave 39 to MXFP4, so files with them are fork-only.

The numbers are IntEnums, as gguf-py's are: they compare, hash, format and pack as plain ints
(`struct.pack("<I", GGUFValueType.UINT32)` writes 4). The keys are plain strings.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Final


class GGUFValueType(IntEnum):
    """The u32 type tag of a GGUF metadata value (an ARRAY's element type uses the same tags)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class TokenType(IntEnum):
    """An entry of `tokenizer.ggml.token_type` (0 is UNDEFINED in llama.h, never written)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class TokenizerKeys:
    """GGUF tokenizer metadata keys (plain strings, as KV.key holds them)."""

    MODEL: Final = "tokenizer.ggml.model"
    PRE: Final = "tokenizer.ggml.pre"
    LIST: Final = "tokenizer.ggml.tokens"
    TOKEN_TYPE: Final = "tokenizer.ggml.token_type"
    SCORES: Final = "tokenizer.ggml.scores"
    MERGES: Final = "tokenizer.ggml.merges"
    BOS_ID: Final = "tokenizer.ggml.bos_token_id"
    EOS_ID: Final = "tokenizer.ggml.eos_token_id"
    UNK_ID: Final = "tokenizer.ggml.unknown_token_id"
    PAD_ID: Final = "tokenizer.ggml.padding_token_id"
    ADD_BOS: Final = "tokenizer.ggml.add_bos_token"
    ADD_EOS: Final = "tokenizer.ggml.add_eos_token"
    CHAT_TEMPLATE: Final = "tokenizer.chat_template"


class GGMLType(IntEnum):
    """The u32 ggml type id of a GGUF tensor info: the plain types and the ternary codecs'."""

    F32 = 0
    F16 = 1
    I8 = 24
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    I2_S = 36  # bitnet.cpp's fork only
    TL1 = 38  # bitnet.cpp's fork only
    TL2 = 39  # bitnet.cpp's fork only (mainline: MXFP4)
    Q1_0 = 41
    Q2_0 = 42  # mainline llama.cpp, not yet in gguf-py 0.19.0
