"""bitconv/gguf_values.py against independent sources: gguf-py's constants (a test dependency,
no longer imported by bitconv) and the C headers llama-cpp-python ships (ggml.h, gguf.h,
llama.h), where it is installed."""
from __future__ import annotations

import re
import subprocess
import sys
from enum import IntEnum
from pathlib import Path

import gguf
import pytest

from bitconv.gguf_values import GGMLType, GGUFValueType, TokenizerKeys, TokenType

FORK_ONLY = {"I2_S": 36, "TL1": 38, "TL2": 39}  # bitnet.cpp's ids: not in gguf-py or mainline
NEWER_THAN_GGUF_PY = {"Q2_0": 42}  # mainline ggml.h; gguf-py 0.19.0 does not know it yet


def members(enum: type[IntEnum]) -> dict[str, int]:
    return {m.name: int(m.value) for m in enum}


def test_value_types_are_gguf_py_s():
    assert members(GGUFValueType) == members(gguf.GGUFValueType)  # every one, same names


def test_token_types_are_gguf_py_s():
    assert members(TokenType) == members(gguf.TokenType)


def test_tokenizer_keys_are_gguf_py_s():
    ours = {k: v for k, v in vars(TokenizerKeys).items() if k.isupper()}
    assert ours
    for name, key in ours.items():
        assert getattr(gguf.Keys.Tokenizer, name) == key, name


def test_tensor_types_are_gguf_py_s_where_it_knows_them():
    theirs = members(gguf.GGMLQuantizationType)
    for name, value in members(GGMLType).items():
        if name in FORK_ONLY:
            assert value == FORK_ONLY[name]
            assert theirs.get(name) is None
        elif name in NEWER_THAN_GGUF_PY and name not in theirs:
            assert value == NEWER_THAN_GGUF_PY[name]
            assert value not in theirs.values()  # the id is still free in gguf-py
        else:
            assert theirs[name] == value, name


def test_the_numbers_behave_as_ints():
    """Written with struct, compared with what the reader returns, shown in messages as ints."""
    import struct

    assert struct.pack("<I", GGUFValueType.UINT32) == struct.pack("<I", 4)
    assert {GGMLType.F32: "F32"}[0] == "F32" and GGMLType.TQ2_0 == 35
    assert f"{GGMLType.I2_S} {TokenType.CONTROL}" == "36 3"


def _include() -> Path | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    inc = Path(llama_cpp.__file__).parents[1] / "include"
    return inc if (inc / "ggml.h").is_file() else None


def _enum(header: Path, prefix: str) -> dict[str, int]:
    """`PREFIX_NAME = value,` entries of a C header (commented-out ones skipped)."""
    text = re.sub(r"//.*", "", header.read_text())
    return {m[1]: int(m[2]) for m in re.finditer(rf"\b{prefix}(\w+)\s*=\s*(\d+)", text)}


def test_against_the_c_headers():
    inc = _include()
    if inc is None:
        pytest.skip("llama-cpp-python (with its include/ headers) is not installed")
    assert _enum(inc / "gguf.h", "GGUF_TYPE_") == members(GGUFValueType)
    llama = {k: v for k, v in _enum(inc / "llama.h", "LLAMA_TOKEN_TYPE_").items() if v}
    assert llama == members(TokenType)  # 0 is UNDEFINED, never written
    ggml = _enum(inc / "ggml.h", "GGML_TYPE_")
    for name, value in members(GGMLType).items():
        if name in FORK_ONLY:
            assert ggml.get(name) is None
        else:
            assert ggml[name] == value, name


def test_no_command_imports_gguf_py():
    """bitconv itself never imports gguf-py (nor, on the stages' import path, sentencepiece,
    protobuf and tqdm): checked in a fresh interpreter."""
    code = ("import sys, bitconv.stages.pack, bitconv.stages.repack, bitconv.stages.verify, "
            "bitconv.stages.inspect; "
            "print(sorted(m for m in ('gguf', 'sentencepiece', 'google.protobuf', 'tqdm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"
