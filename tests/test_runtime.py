"""The runtime's BitLinear modes, lazy weights and the verify options that use them."""
from __future__ import annotations

import numpy as np
import pytest

from bitconv.cli import MODES as CLI_MODES
from bitconv.errors import InputError
from bitconv.runtime.bitlinear import MODES, bitlinear, q8k
from bitconv.runtime.model import Model
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from tests.support.cli import cli

F32 = np.float32


def test_cli_lists_the_runtime_modes():
    assert CLI_MODES == MODES


def test_q8k_by_hand():
    # Derived by hand from llama-cpp.md §4.5: the signed peak -4 gives iscale = -127/-4 = 31.75;
    # 2*31.75 = 63.5 rounds half to even -> 64; 1*31.75 = 31.75 -> 32; -4 -> -127; d = 1/31.75.
    x = np.zeros((1, 256), F32)
    x[0, :4] = [2, -4, 1, 0]
    q, d = q8k(x)
    assert q[0, 0, :4].tolist() == [64, -127, 32, 0] and not q[0, 0, 4:].any()
    assert d[0, 0] == F32(1) / F32(31.75)
    # a positive peak maps to -127 too (iscale is negative), and 127 caps the other side
    x[0, :4] = [4, -4, 2, 0]
    q, _ = q8k(x)
    assert q[0, 0, :4].tolist() == [-127, 127, -64, 0]  # -4*-31.75 = 127; 2*-31.75 = -63.5 -> -64


def test_q8k_all_zero_block_has_zero_scale():
    q, d = q8k(np.zeros((2, 512), F32))
    assert not q.any() and not d.any()


def _float64_reference(x, codes, m, mode):
    """Straight from the definitions in runtime/bitlinear.py, in float64 on the same integers."""
    x64 = x.astype(np.float64)
    if mode == "llama.cpp":
        q, d = q8k(x)
        sums = np.einsum("nbk,obk->nbo", q.astype(np.float64),
                         codes.reshape(codes.shape[0], -1, 256).astype(np.float64))
        return (sums * d.astype(np.float64)[:, :, None]).sum(1) * float(m)
    s = 127.0 / np.maximum(np.abs(x64).max(-1, keepdims=True), 1e-5)
    q = np.clip(np.rint(x * s.astype(F32)), -128, 127).astype(np.float64)
    return q @ codes.T.astype(np.float64) / s * float(m)


@pytest.mark.parametrize("mode", MODES)
def test_bitlinear_modes_match_a_float64_reference(mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 768)).astype(F32)
    codes = rng.integers(-1, 2, (64, 768)).astype(F32)
    got = bitlinear(x, codes, F32(0.37), mode)
    want = _float64_reference(x, codes, F32(0.37), mode)
    # float32 rounding of the final scalings only: the integer sums are exact
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * np.abs(want).max())


def test_llamacpp_mode_is_finer_than_per_token():
    # One outlier in the first 256 elements: per-token quantization flattens the other block,
    # per-256 Q8_K does not, so llama.cpp mode is closer to the float product.
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((1, 512)) * 0.01).astype(F32)
    x[0, 0] = 100
    codes = rng.integers(-1, 2, (32, 512)).astype(F32)
    codes[:, :256] = 0  # the outlier's block contributes nothing; only the scale choice matters
    exact_float = x.astype(np.float64) @ codes.T.astype(np.float64)
    err = {m: np.abs(bitlinear(x, codes, F32(1), m) - exact_float).max() for m in MODES}
    assert err["llama.cpp"] < err["exact"] / 10


def test_unknown_mode_is_refused(fixtures_root):
    w = load_checkpoint_weights(fixtures_root / "bitnet-b1.58-2B-4T")
    with pytest.raises(InputError, match="unknown mode 'fast'; choose one of: exact, bitnet.cpp, "
                                         "llama.cpp"):
        Model(w, "fast")


@pytest.mark.parametrize("mode", MODES)
def test_keep_false_streams_to_the_same_logits(fixtures_root, mode):
    w = load_checkpoint_weights(fixtures_root / "bitnet-b1.58-2B-4T")
    ids = np.array([1, 5, 9, 200, 3])
    a = Model(w, mode, codes="f32").forward(ids)
    b = Model(w, mode, codes="stream").forward(ids)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_bitlinear_reads_transposed_codes_in_place(mode):
    # Model keeps codes as a (K, out) contiguous array and passes its transpose
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 512)).astype(F32)
    codes = rng.integers(-1, 2, (48, 512)).astype(F32)
    stored = np.ascontiguousarray(codes.T)
    assert np.array_equal(bitlinear(x, stored.T, F32(0.5), mode), bitlinear(x, codes, F32(0.5), mode))


@pytest.mark.parametrize("mode", MODES)
def test_every_weight_layout_gives_the_same_logits(fixtures_root, mode, packed):
    """Loaded up front on threads ((K, out) float32), lazily, or streamed through one reused
    buffer (laid out (K, out) as the kept codes): the same bits, from file and source."""
    src = fixtures_root / "bitnet-b1.58-2B-4T"
    path = packed("bitnet-b1.58-2B-4T", "i2s")
    ids = np.array([1, 5, 9, 200, 3])
    want = Model(load_gguf(path), mode).load().forward(ids)
    for w in (load_gguf(path), load_checkpoint_weights(src)):
        assert np.array_equal(Model(w, mode).forward(ids), want)
        assert np.array_equal(Model(w, mode, codes="stream").forward(ids), want)
    last = Model(load_gguf(path), mode).load().forward(ids, last=True)
    assert last.shape == (1, want.shape[1])
    np.testing.assert_allclose(last[0], want[-1], rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_modes_differ_from_exact(fixtures_root):
    w = load_checkpoint_weights(fixtures_root / "bitnet_b1_58-large")
    ids = np.arange(8)
    out = {m: Model(w, m).forward(ids) for m in MODES}
    assert not np.array_equal(out["exact"], out["llama.cpp"])
    assert not np.array_equal(out["exact"], out["bitnet.cpp"])


def test_lazy_weights_decode_on_access(packed):
    path = packed("bitnet-b1.58-2B-4T", "i2s")
    w = load_gguf(path)
    a, b = w.tensors["blk.0.attn_q.weight"], w.tensors["blk.0.attn_q.weight"]
    assert a is not b and np.array_equal(a.codes, b.codes)  # nothing is cached


@pytest.mark.parametrize("mode", ["llama.cpp", "bitnet.cpp"])
def test_verify_in_each_mode(fixtures_root, mode, packed):
    src = fixtures_root / "bitnet_b1_58-large"
    path = packed("bitnet_b1_58-large", "i2s")
    r = cli("verify", path, "--source", src, "--mode", mode, "--no-drift")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].endswith(f"logits bit-identical ({mode} mode)")


def test_drift_is_information(fixtures_root, packed):
    packed_src = fixtures_root / "bitnet-b1.58-2B-4T"
    path = packed("bitnet-b1.58-2B-4T", "i2s")
    r = cli("verify", path, "--source", packed_src)
    assert r.stdout.splitlines()[-1] == ("info  drift      no latent weights in the source "
                                         "(it is already ternary)")
    latent_src = fixtures_root / "bitnet-b1.58-2B-4T-bf16"
    path = packed("bitnet-b1.58-2B-4T-bf16", "i2s")
    r = cli("verify", path, "--source", latent_src, "--json")
    import json
    drift = json.loads(r.stdout)["findings"][-1]
    assert drift["check"] == "drift" and drift["class"] == "info" and r.exit_code == 0
    assert drift["message"].startswith("vs latent float weights: max |delta| ")
