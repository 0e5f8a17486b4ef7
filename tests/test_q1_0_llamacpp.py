"""llama.cpp (llama-cpp-python 0.3.36) and our Q1_0 files of binary models (formats/q1_0.md §6).

The binary fixtures of tests/test_q1_0.py (1bitLLM layout, arch `bitnet`; Llama3 layout, arch
`llama`): llama.cpp loads q1_0 and q1_0-fp16 files and its logits match our runtime's
`llama.cpp` mode (Q8_0 activations, four blocks of 32 per Q1_0 block), judged per position by
tests/tie_flips.py; llama.cpp's own quantizer (MOSTLY_Q1_0 from an F32 GGUF of the same model)
writes the codes and d of our q1_0-fp16 file.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_q1_0 import binaries, packed_binary  # noqa: F401  (module fixtures)
from test_q2_0 import HeaderOnly
from test_q2_0_llamacpp import (
    _ids,
    llama_logits,
    llama_quantize,
    write_f32_multiplied_out,
)
from tie_flips import TIGHT, explain

from bitconv.containers.gguf_reader import read_gguf, tensor_bytes
from bitconv.containers.gguf_writer import Q1_0
from bitconv.formats import q1_0
from bitconv.runtime.model import Model
from bitconv.runtime.weights import load_gguf

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


@pytest.mark.parametrize("fmt", ["q1_0", "q1_0-fp16"])
@pytest.mark.parametrize("family", ["bitnet", "llama"])
def test_llama_cpp_loads_and_matches_runtime_llama_cpp_mode(family, fmt, packed_binary,  # noqa: F811
                                                           monkeypatch):
    path = packed_binary(family, fmt)
    weights = load_gguf(path)
    ids = _ids(weights, 32)
    got = llama_logits(path, ids)
    model = Model(weights, mode="llama.cpp")
    assert model.group == 128
    verdict = explain(got, model, ids, monkeypatch)
    assert verdict.worst_clean <= TIGHT


def test_q8_k_activations_are_not_explained_away(packed_binary, monkeypatch):  # noqa: F811
    path = packed_binary("bitnet", "q1_0")
    weights = load_gguf(path)
    ids = _ids(weights, 8)
    model = Model(weights, mode="llama.cpp")
    model.group = 0
    with pytest.raises(AssertionError, match="position 0 differs"):
        explain(llama_logits(path, ids), model, ids, monkeypatch)


@pytest.mark.parametrize("family", ["bitnet", "llama"])
def test_llama_cpp_quantizer_writes_our_q1_0_fp16_values(family, packed_binary,  # noqa: F811
                                                         tmp_path):
    f32 = tmp_path / "f32.gguf"
    ternary = write_f32_multiplied_out(packed_binary(family, "q1_0"), f32)
    theirs = tmp_path / "theirs-q1_0.gguf"
    llama_quantize(f32, theirs, ftype=40)  # LLAMA_FTYPE_MOSTLY_Q1_0 (include/llama.h L158)
    tg, og = HeaderOnly(theirs), read_gguf(packed_binary(family, "q1_0-fp16"))
    raw = theirs.read_bytes()
    assert int(tg.fields["general.file_type"].contents()) == 40
    assert sorted(n for n, i in tg.infos.items() if i[1] == Q1_0) == sorted(ternary)
    o_by = {t.name: t for t in og.tensors}
    for n in ternary:
        shape = o_by[n].shape
        a = np.frombuffer(raw, np.uint8, q1_0.CODEC.nbytes(shape), tg.data_offset + tg.infos[n][2])
        b = np.asarray(tensor_bytes(og, o_by[n]))
        ca, da = q1_0.unpack(a, shape)
        cb, db = q1_0.unpack(b, shape)
        np.testing.assert_array_equal(ca, cb, err_msg=n)
        # d = fp16(mean|x|): 128 float32 copies of m summed in order, / 128, then fp16 — the
        # same fp16 as fp16(m) unless that sum's rounding crosses an fp16 rounding boundary
        np.testing.assert_array_equal(da, db, err_msg=n)
        assert a.tobytes() == b.tobytes()
    ids = _ids(load_gguf(packed_binary(family, "q1_0-fp16")), 8)
    np.testing.assert_array_equal(llama_logits(theirs, ids),
                                  llama_logits(packed_binary(family, "q1_0-fp16"), ids))
