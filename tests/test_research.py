"""Research inference modes (bitconv/runtime/research.py): quantizers on hand-derived vectors,
Hadamard orthonormal and invertible, top-K keeps exactly k, every mode off is exact mode bit for
bit, and the presets run on the trained tiny model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bitconv.errors import InputError
from bitconv.model.ternary import abs_median
from bitconv.runtime.bitlinear import bitlinear
from bitconv.runtime.model import Model
from bitconv.runtime.research import (
    PRESETS,
    SiteQuant,
    hadamard,
    kv,
    linear,
    parse,
    quantize,
    topk,
)
from bitconv.runtime.weights import load_checkpoint_weights
from tests.support.cli import cli

TINY = Path(__file__).resolve().parents[1] / "models" / "bitnet-tiny-shakespeare"
F32 = np.float32


def test_absmax_4bit_hand_derived():
    # Qp = 7, s = 7 / max|x| = 7: x·s = 7, -3.5, 1.75, 0 -> 7, -4 (half to even), 2, 0
    q, s = quantize(np.array([[1.0, -0.5, 0.25, 0.0]], F32), 4)
    assert s[0, 0] == 7 and q.tolist() == [[7, -4, 2, 0]]


def test_absmean_4bit_hand_derived():
    # BitNet a4.8 INT4: s = sqrt(7) / mean|x|; mean|(2, -1, .5, -.5)| = 1:
    # x·s = 5.29, -2.65, 1.32, -1.32 -> 5, -3, 1, -1
    q, s = quantize(np.array([[2.0, -1.0, 0.5, -0.5]], F32), 4, "absmean")
    assert math.isclose(float(s[0, 0]), math.sqrt(7), rel_tol=1e-6)
    assert q.tolist() == [[5, -3, 1, -1]]
    # an outlier clips: mean|(10, 0, 0, 0)| = 2.5, 10·sqrt(7)/2.5 = 10.6 -> 7
    q, _ = quantize(np.array([[10.0, 0, 0, 0]], F32), 4, "absmean")
    assert q.tolist() == [[7, 0, 0, 0]]


def test_absmean_is_4_bit_only():
    with pytest.raises(InputError, match="absmean"):
        SiteQuant(8, "absmean")


def test_8bit_absmax_site_is_exact_mode_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 256)).astype(F32)
    codes = rng.integers(-1, 2, (64, 256)).astype(F32)
    m = F32(0.0173)
    np.testing.assert_array_equal(linear(x, codes, m, SiteQuant(8)),
                                  bitlinear(x, codes, m, "exact"))


@pytest.mark.parametrize("d", [1, 2, 8, 256])
def test_hadamard_orthonormal_and_invertible(d):
    h = hadamard(d).astype(np.float64)
    np.testing.assert_allclose(h @ h.T, np.eye(d), atol=1e-6)
    np.testing.assert_array_equal(h, h.T)
    x = np.random.default_rng(d).standard_normal((3, d))
    np.testing.assert_allclose(x @ h @ h, x, atol=1e-5)  # H is its own inverse


def test_hadamard_refuses_other_sizes():
    with pytest.raises(InputError, match="power-of-two"):
        hadamard(768)


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.1, 1.0])
def test_topk_keeps_exactly_k(ratio):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal((4, 100)), np.ones((1, 100))]).astype(F32)  # ties
    y = topk(x, ratio)
    k = math.ceil(ratio * 100)
    assert ((y != 0).sum(-1) == k).all()
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])
    for row, out in zip(x[:4], y[:4]):  # the kept ones are the largest |x|
        assert np.abs(out[out != 0]).min() >= np.sort(np.abs(row))[-k]


def test_topk_quantizes_with_the_dense_statistic():
    # a4.8 eq. 1 / Q-Sparse eq. 4: Y = (Q(X) ⊙ Top_k(|X|)) · Wᵀ. absmean 4 bit, x = (4, -1, 1, 2):
    # β = mean|x| = 2, s = sqrt(7)/2: x·s = 5.29, -1.32, 1.32, 2.65 -> 5, -1, 1, 3; top 50 % keeps
    # positions 0 and 3 -> (5, 0, 0, 3), y = q / s. (Masking first would give β = 1.5 and (7, 0, 0, 4).)
    eye = np.eye(4, dtype=F32)
    y = linear(np.array([[4.0, -1, 1, 2]], F32), eye, F32(1), SiteQuant(4, "absmean", topk=0.5))
    np.testing.assert_allclose(y * math.sqrt(7) / 2, [[5, 0, 0, 3]], atol=1e-5)
    # absmax 8 bit: s = 127 / 1; (1, -0.5, 0.25, 0)·127 -> 127, -64 (half to even), 32, 0; top 50 %
    # keeps positions 0 and 1 (the largest entry always survives, so the order does not matter)
    y = linear(np.array([[1.0, -0.5, 0.25, 0]], F32), eye, F32(1), SiteQuant(8, topk=0.5))
    np.testing.assert_array_equal(y * F32(127), [[127, -64, 0, 0]])


def test_kv_keeps_the_bos_position_at_more_bits():
    # a4.8 §3.1: a 3-bit KV cache keeps the BOS token's heads at 4 bits. Row (1, -0.5, 0.25, 0.1):
    # 3 bits, Qp = 3: 3, -1.5 -> -2, 0.75 -> 1, 0.3 -> 0 -> (1, -2/3, 1/3, 0);
    # 4 bits, Qp = 7: 7, -3.5 -> -4, 1.75 -> 2, 0.7 -> 1 -> (1, -4/7, 2/7, 1/7)
    x = np.tile(np.array([1.0, -0.5, 0.25, 0.1], F32), (1, 2, 1))  # (heads, positions, dim)
    three, four = [1, -2 / 3, 1 / 3, 0], [1, -4 / 7, 2 / 7, 1 / 7]
    np.testing.assert_allclose(kv(x, 3, 4, start=0)[0], [four, three], atol=1e-6)
    np.testing.assert_allclose(kv(x, 3, 4, start=5)[0], [three, three], atol=1e-6)  # decode step
    assert parse("kv=3").kv_bos_bits == 4 and parse("kv=3:bos8").kv_bos_bits == 8  # a4.8 / v2
    assert parse("kv=8").kv_bos_bits == 8


def test_v2_preset_is_absmean_4bit_with_hadamard_on_the_intermediate_states():
    # BitNet v2 §2.1: per-token absmean for 4-bit activations (eq. 6), H-BitLinear for Wo, Wdown
    v2 = dict(PRESETS["v2"].sites)
    assert v2["attn_in"] == v2["ffn_in"] == SiteQuant(4, "absmean")
    assert v2["o_in"] == v2["down_in"] == SiteQuant(4, "absmean", hadamard=True)


def test_abs_median_is_the_lower_middle_value():
    # BitNet b1.58 Reloaded's code takes torch's median: the lower of the two middle values
    # for an even count. |w| sorted: 0.1 0.2 0.3 0.4 -> 0.2 (numpy's median would be 0.25)
    assert abs_median(np.array([0.1, -0.4, 0.3, -0.2], F32), "F32") == F32(0.2)
    assert abs_median(np.array([3.0, -1.0, 2.0], F32), "F32") == F32(2.0)


@pytest.fixture(scope="module")
def tiny():
    return load_checkpoint_weights(TINY)


def test_every_mode_off_is_exact_mode(tiny):
    ids = np.arange(40) * 31 % 2816
    exact = Model(tiny).forward(ids)
    for spec in ("", "all=8", "all=8:top1.0"):
        np.testing.assert_array_equal(Model(tiny, research=parse(spec)).forward(ids), exact)


def test_presets_change_the_model(tiny):
    ids = np.arange(40) * 31 % 2816
    exact = Model(tiny).forward(ids)
    for name in [*PRESETS, "kv=3"]:
        got = Model(tiny, research=parse(name)).forward(ids)
        rel = np.abs(got - exact).max() / np.abs(exact).max()
        assert 0 < rel < 0.5, (name, rel)  # lossy, but the same model
    bos4, bos3 = (Model(tiny, research=parse(s)).forward(ids) for s in ("kv=3", "kv=3:bos3"))
    assert not np.array_equal(bos4, bos3)  # the first position's 4 bits are used


def test_research_needs_exact_mode(tiny):
    with pytest.raises(InputError, match="exact mode"):
        Model(tiny, mode="llama.cpp", research=parse("a4.8"))


@pytest.mark.parametrize("spec", ["a5", "o_in=5", "x_in=4", "all=4:sharp", "kv=7", "all=4:top0",
                                  "kv=4:bos3", "kv=3:x4", "kv=3:bos5"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(InputError):
        parse(spec)


def test_parse_composes():
    r = parse("a4.8,kv=3,down_in=4:hadamard")
    assert r.kv_bits == 3 and r.site("down_in") == SiteQuant(4, hadamard=True)
    assert r.site("attn_in") == SiteQuant(4, "absmean")


def test_run_and_logits_take_research(tmp_path):
    outs = {}
    for spec in (None, "all=8", "a4.8"):
        out = tmp_path / f"{spec}.npy"
        args = ["logits", str(TINY), "-p", "To be, or not to be", "-o", str(out)]
        r = cli(*args + (["--research", spec] if spec else []))
        assert r.exit_code == 0, r.output
        outs[spec] = np.load(out)
    np.testing.assert_array_equal(outs["all=8"], outs[None])
    assert not np.array_equal(outs["a4.8"], outs[None])
    r = cli("run", TINY, "-p", "To be", "-n", "4", "--research", "v2")
    assert r.exit_code == 0 and r.output.strip()
    r = cli("run", TINY, "-p", "To be", "--research", "a4.8", "--mode", "bitnet.cpp")
    assert r.exit_code == 1 and "exact mode" in r.output


def test_pack_scale_stat_median(tmp_path):
    """BitNet b1.58 Reloaded: the multiplier is median|W| of the latent masters (the lower middle
    value, as torch's median) and the codes are clip(rint(W / median), -1, 1); packed sources and
    the hf export refuse it."""
    from bitconv.runtime.weights import load_gguf
    from bitconv.stages.pack import pack

    bf16 = TINY.parent / "bitnet-tiny-shakespeare-bf16"
    path = pack(bf16, format="i2s", out=tmp_path / "m.gguf", scale_stat="median").path
    latent = load_checkpoint_weights(bf16, latent=True).tensors["blk.1.ffn_down.weight"]
    w = np.asarray(latent, F32)
    got = load_gguf(path).tensors["blk.1.ffn_down.weight"]
    m = np.sort(np.abs(w), axis=None)[(w.size - 1) // 2]
    assert got.multiplier == m
    np.testing.assert_array_equal(got.codes, np.clip(np.rint(w / m), -1, 1))
    mean_packed = load_gguf(pack(bf16, format="i2s", out=tmp_path / "a.gguf").path)
    assert mean_packed.tensors["blk.1.ffn_down.weight"].multiplier != m
    with pytest.raises(InputError, match="latent"):
        pack(TINY, format="i2s", out=tmp_path / "p.gguf", scale_stat="median")
    with pytest.raises(InputError, match="GGUF"):
        pack(bf16, format="hf", out=tmp_path / "hf", scale_stat="median")
