"""llama.cpp (llama-cpp-python from PyPI) runs our TQ1_0/TQ2_0 files; its logits vs our runtime.

Settings as DESIGN.md §5b asks for reproducible logits: F32 K/V (type_k = type_v = 0), no flash
attention, 2 threads. Tokens: verify's fixed_tokens(16, vocab) (32 where judged per position). Measured with llama-cpp-python
0.3.36 (llama.cpp 0c1e57098, AVX2), max |Δlogit| / max |logit| per position:

    file (bitnet_b1_58-large, arch bitnet)   vs llama.cpp mode        vs exact mode
    tq2_0, tq1_0 (d = 1 + .scale)            ≤ 2e-5 at every position   2.0e-2
    Llama3 fixture, arch llama, tq2_0/tq1_0  ≤ 2e-5 until a tie flip   1.3e-2

The comparison is judged position by position (tests/tie_flips.py): every position agrees to
1e-4, except after a Q8_K activation that sits within 1e-3 of a rounding tie in our run and is
shown to be the cause by rounding it the other way. Where (and whether) such a flip happens
depends on the CPU and BLAS build: on one machine the Llama fixture had none in 16 tokens, on
another of the same kind one at 7.9e-3 (issue 13). The verdict no longer does.
"""
from __future__ import annotations

import numpy as np
import pytest
from tie_flips import TIGHT, explain

from bitconv.runtime.model import Model
from bitconv.runtime.weights import load_gguf
from bitconv.stages.verify import fixed_tokens

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (`pip install llama-cpp-python` "
                        "builds it from the PyPI sdist, ~8 min)")

TQ_FORMATS = ["tq2_0", "tq1_0", "tq2_0-fp16", "tq1_0-fp16"]
EXACT_REL = 0.05       # exact mode: per-token int8 activations instead of Q8_K (see below)


def llama_logits(path, ids) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=2,
                          n_threads_batch=2, type_k=0, type_v=0, flash_attn=False, verbose=False)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def runtime_logits(weights, ids, mode: str) -> np.ndarray:
    try:
        model = Model(weights, mode=mode)
    except TypeError:
        pytest.xfail(f"the runtime has no mode {mode!r} yet")
    return model.forward(np.asarray(ids))


def _ids(weights, n: int = 16):
    return [int(i) for i in fixed_tokens(n, len(weights.kvs["tokenizer.ggml.tokens"]))]


@pytest.mark.parametrize("fmt", TQ_FORMATS)
@pytest.mark.parametrize("name", ["bitnet_b1_58-large", "Llama3-8B-1.58-100B-tokens"])
def test_llama_cpp_matches_runtime_llama_cpp_mode(name, fmt, packed, monkeypatch):
    path = packed(name, fmt)
    weights = load_gguf(path)
    ids = _ids(weights, 32)
    got = llama_logits(path, ids)
    assert got.shape == (32, len(weights.kvs["tokenizer.ggml.tokens"]))
    verdict = explain(got, Model(weights, mode="llama.cpp"), np.asarray(ids), monkeypatch)
    assert verdict.worst_clean <= TIGHT


@pytest.mark.parametrize("name", ["bitnet_b1_58-large", "Llama3-8B-1.58-100B-tokens"])
def test_a_different_numeric_model_is_not_explained_away(name, packed, monkeypatch):
    # exact mode (one int8 scale per token instead of per 256) against llama.cpp: the judge
    # must refuse it, not find "tie flips" that excuse it
    path = packed(name, "tq2_0")
    weights = load_gguf(path)
    ids = _ids(weights)
    with pytest.raises(AssertionError, match="no activation within"):
        explain(llama_logits(path, ids), Model(weights, mode="exact"), np.asarray(ids),
                monkeypatch)


@pytest.mark.parametrize("fmt", ["tq2_0", "tq1_0"])
def test_llama_cpp_near_exact_mode(fmt, packed):
    # Exact mode quantizes each token's activations with one int8 scale (max|x|/127) where
    # llama.cpp uses one per 256 (Q8_K), and it keeps the final hidden state in float32 where
    # ggml rounds it to fp16 for the F16 LM head. Both are int8 steps of max|x|/127, i.e. ~0.8%
    # per linear; over 14 linears of this untrained model that measured 2.0e-2 (bitnet) and
    # 1.3e-2 (llama): 0.05 leaves 2.5x margin while still catching a wrong layout or scale,
    # which gives O(1) differences.
    path = packed("bitnet_b1_58-large", fmt)
    weights = load_gguf(path)
    ids = _ids(weights)
    got = llama_logits(path, ids)
    exact = runtime_logits(weights, ids, "exact")
    assert 1e-3 < rel(got, exact) <= EXACT_REL   # > 1e-3: the two modes do differ
    assert (got.argmax(1) == exact.argmax(1)).mean() >= 0.75


def test_llama_cpp_reproducible(packed):
    path = packed("bitnet_b1_58-large", "tq2_0")
    ids = _ids(load_gguf(path))
    np.testing.assert_array_equal(llama_logits(path, ids), llama_logits(path, ids))


def test_lossless_and_lossy_differ_only_by_fp16_multiplier(packed):
    # the same codes; only d differs, so llama.cpp's logits move by the fp16 rounding alone
    a, b = packed("bitnet_b1_58-large", "tq2_0"), packed("bitnet_b1_58-large", "tq2_0-fp16")
    ids = _ids(load_gguf(a))
    la, lb = llama_logits(a, ids), llama_logits(b, ids)
    assert 0 < rel(la, lb) < 0.05


def test_2b4t_is_refused_not_run_wrongly(packed, capfd):
    # llama.cpp's `bitnet` graph is SiLU; the 2B4T family is ReLU², so bitconv writes arch
    # `bitnet-b1.58`, which llama.cpp does not know: it must refuse the file, not run it.
    path = packed("bitnet-b1.58-2B-4T", "tq2_0")
    capfd.readouterr()
    with pytest.raises(ValueError, match="Failed to load model from file"):
        llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=True)
    err = capfd.readouterr().err
    assert "error loading model: unknown model architecture: 'bitnet-b1.58'" in err
