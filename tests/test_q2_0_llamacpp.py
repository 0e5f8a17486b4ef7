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

import numpy as np
import pytest

from bitconv.pack import pack
from bitconv.runtime.model import Model
from bitconv.runtime.weights import load_gguf
from bitconv.verify import fixed_tokens
from tie_flips import TIGHT, explain

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (`pip install llama-cpp-python` "
                        "builds it from the PyPI sdist, ~8 min)")

FAMILIES = ["bitnet_b1_58-large", "Llama3-8B-1.58-100B-tokens"]  # arch bitnet, arch llama


@pytest.fixture(scope="module")
def packed(fixtures_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("q2ll")

    def get(name: str, fmt: str):
        path = out / f"{name}-{fmt}.gguf"
        if not path.exists():
            pack(fixtures_root / name, format=fmt, out=path)
        return path
    return get


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
