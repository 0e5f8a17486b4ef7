"""llama.cpp (llama-cpp-python 0.3.36 from PyPI) and our Q2_0 files (formats/q2_0.md §7, §9).

1. It loads q2_0 and q2_0-fp16 files of every family whose arch mainline runs (`bitnet`: the
   1bitLLM fixture; `llama`: the Llama3 fixture; not 2B4T, whose `bitnet-b1.58` it refuses, see
   test_llamacpp_interop.py) and its logits match our runtime's `llama.cpp` mode, which quantizes
   activations to Q8_0 for these weights, judged per position by tests/tie_flips.py. Measured
   here (AVX-512 EPYC, 32 tokens): every position within 6e-7 of max|logit| except one tie flip
   (bitnet, q2_0, position 21), which the judge finds. Q8_K activations (the TQ numerics) differ
   by ~2e-2 at every position and are refused.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_q2_0 import HeaderOnly
from tie_flips import TIGHT, explain

from bitconv.containers.gguf_reader import kv_records, read_gguf, tensor_bytes
from bitconv.containers.gguf_writer import F32, Q2_0, GGUFWriter, TensorInfo
from bitconv.formats import q2_0
from bitconv.runtime.model import Model
from bitconv.runtime.weights import load_gguf
from bitconv.stages.verify import fixed_tokens
from bitconv.types import KV, TernaryTensor

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (`pip install llama-cpp-python` "
                        "builds it from the PyPI sdist, ~8 min)")

FAMILIES = ["bitnet_b1_58-large", "Llama3-8B-1.58-100B-tokens"]  # arch bitnet, arch llama


def llama_logits(path, ids) -> np.ndarray:
    # DESIGN.md §5b: F32 K/V, no flash attention, fixed threads -> reproducible logits
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=2,
                          n_threads_batch=2, type_k=0, type_v=0, flash_attn=False, verbose=False)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()


def _ids(weights, n: int):
    return np.asarray(fixed_tokens(n, len(weights.kvs["tokenizer.ggml.tokens"])))


@pytest.mark.parametrize("fmt", ["q2_0", "q2_0-fp16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_llama_cpp_loads_and_matches_runtime_llama_cpp_mode(name, fmt, packed, monkeypatch):
    path = packed(name, fmt)
    weights = load_gguf(path)
    ids = _ids(weights, 32)
    got = llama_logits(path, ids)
    assert got.shape == (32, len(weights.kvs["tokenizer.ggml.tokens"]))
    model = Model(weights, mode="llama.cpp")
    assert model.group == 64  # Q8_0 activations, two blocks of 32 per Q2_0 block
    verdict = explain(got, model, ids, monkeypatch)
    assert verdict.worst_clean <= TIGHT
    assert all(f.size == 32 for f in verdict.flips)  # any flip is a Q8_0 code


@pytest.mark.parametrize("name", FAMILIES)
def test_q8_k_activations_are_not_explained_away(name, packed, monkeypatch):
    # the TQ numerics (Q8_K, one scale per 256) on a Q2_0 file: a different numeric model
    path = packed(name, "q2_0")
    weights = load_gguf(path)
    ids = _ids(weights, 8)
    model = Model(weights, mode="llama.cpp")
    model.group = 0
    with pytest.raises(AssertionError, match="position 0 differs"):
        explain(llama_logits(path, ids), model, ids, monkeypatch)


# --- 2. llama.cpp's quantizer as a peer writer ---

def write_f32_multiplied_out(src, out) -> list[str]:
    """Our lossless file as an F32 GGUF the way a float checkpoint converter would write it:
    each ternary weight as float32 codes * multiplier, companions dropped, the rest copied.
    Returns the ternary weights' names."""
    gf, w = read_gguf(src), load_gguf(src)
    ternary = [n for n in w.order if isinstance(w.tensors[n], TernaryTensor)]
    infos, datas = [], []
    for t in gf.tensors:
        if t.name in ternary:
            tt = w.tensors[t.name]
            x = np.ascontiguousarray(tt.codes.astype(np.float32) * np.float32(tt.multiplier))
            infos.append(TensorInfo(t.name, t.shape, F32, x.nbytes))
            datas.append(x.view(np.uint8).reshape(-1))
        elif not t.name.endswith(".scale"):
            infos.append(TensorInfo(t.name, t.shape, t.ggml_type, t.nbytes))
            datas.append(np.asarray(tensor_bytes(gf, t)))
    kvs = [KV(kv.key, kv.vtype, 0, kv.subtype) if kv.key == "general.file_type" else kv
           for kv in kv_records(gf)]  # 0 = LLAMA_FTYPE_ALL_F32
    with open(out, "wb") as f:
        writer = GGUFWriter(f, kvs, infos, alignment=gf.alignment)
        for data in datas:
            writer.write(data)
            writer.end_tensor()
        writer.close()
    return ternary


def llama_quantize(src, out, ftype: int) -> None:
    """llama-quantize SRC OUT <ftype>, with the embeddings and LM head kept F16 as bitconv keeps
    them (llama.cpp's default for MOSTLY_Q2_0 is Q6_K / Q4_K there: src/llama-quant.cpp L539)."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 2
    params.token_embedding_type = params.output_tensor_type = 1  # GGML_TYPE_F16
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize returned {rc}"


@pytest.mark.parametrize("name", FAMILIES)
def test_llama_cpp_quantizer_writes_our_q2_0_fp16_values(name, packed, tmp_path):
    f32 = tmp_path / "f32.gguf"
    ternary = write_f32_multiplied_out(packed(name, "q2_0"), f32)
    theirs = tmp_path / "theirs-q2_0.gguf"
    llama_quantize(f32, theirs, ftype=41)  # LLAMA_FTYPE_MOSTLY_Q2_0 (include/llama.h L159)
    # their file has k-quant embeddings (Q6_K), which bitconv does not read: gguf-py's header
    # parser finds the tensors, the bytes are sliced from the file
    tg, og, raw = HeaderOnly(theirs), read_gguf(packed(name, "q2_0-fp16")), theirs.read_bytes()
    assert int(tg.fields["general.file_type"].contents()) == 41
    o_by = {t.name: t for t in og.tensors}
    # llama.cpp makes every ternary weight Q2_0 (embeddings and norms go elsewhere)
    assert sorted(n for n, i in tg.infos.items() if i[1] == Q2_0) == sorted(ternary)
    for n in ternary:
        shape = o_by[n].shape
        start = tg.data_offset + tg.infos[n][2]
        a = np.frombuffer(raw, np.uint8, q2_0.CODEC.nbytes(shape), start).reshape(-1, 18)
        b = np.asarray(tensor_bytes(og, o_by[n])).reshape(-1, 18)
        ca, da = q2_0.unpack(a.reshape(-1), shape)
        cb, db = q2_0.unpack(b.reshape(-1), shape)
        np.testing.assert_array_equal(ca, cb, err_msg=n)          # the same codes ...
        va = ca.reshape(-1, 64).astype(np.float32) * da.astype(np.float32)[:, None]
        vb = cb.reshape(-1, 64).astype(np.float32) * db.astype(np.float32)[:, None]
        np.testing.assert_array_equal(va, vb, err_msg=n)          # ... the same values ...
        live = cb.reshape(-1, 64).any(axis=1)                     # ... the same bytes, but d
        np.testing.assert_array_equal(a[live], b[live], err_msg=n)  # = 0 in all-zero blocks
        assert (a[~live, 2:] == 0x55).all() and (a[~live, :2] == 0).all()
    # and llama.cpp runs its own file as it runs ours: the same logits
    ids = _ids(load_gguf(packed(name, "q2_0-fp16")), 8)
    np.testing.assert_array_equal(llama_logits(theirs, ids),
                                  llama_logits(packed(name, "q2_0-fp16"), ids))


def test_llama_cpp_converter_then_quantizer_writes_our_values(fixtures_root, packed, tmp_path):
    src = os.environ.get("BITCONV_LLAMA_CPP_SRC")
    if not src or not (Path(src) / "convert_hf_to_gguf.py").is_file():
        pytest.skip("set BITCONV_LLAMA_CPP_SRC to a llama.cpp tree with convert_hf_to_gguf.py")
    name, f32 = "bitnet_b1_58-large", tmp_path / "conv-f32.gguf"
    subprocess.run([sys.executable, str(Path(src) / "convert_hf_to_gguf.py"),
                    str(fixtures_root / name), "--outtype", "f32", "--outfile", str(f32)],
                   check=True, capture_output=True, env={**os.environ,
                                                         "PYTHONPATH": str(Path(src) / "gguf-py")})
    theirs = tmp_path / "conv-q2_0.gguf"
    llama_quantize(f32, theirs, ftype=41)
    tg, raw = HeaderOnly(theirs), theirs.read_bytes()
    og = read_gguf(packed(name, "q2_0-fp16"))
    ours = {t.name: t for t in og.tensors if t.ggml_type == Q2_0}
    assert sorted(n for n, i in tg.infos.items() if i[1] == Q2_0) == sorted(ours)
    for n, t in ours.items():
        a = np.frombuffer(raw, np.uint8, q2_0.CODEC.nbytes(t.shape), tg.data_offset + tg.infos[n][2])
        ca, da = q2_0.unpack(a, t.shape)
        cb, db = q2_0.unpack(np.asarray(tensor_bytes(og, t)), t.shape)
        np.testing.assert_array_equal(ca, cb, err_msg=n)
        live = cb.reshape(-1, 64).any(axis=1)
        np.testing.assert_array_equal(da[live], db[live], err_msg=n)
