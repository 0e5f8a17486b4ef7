"""Packed3 (runtime/packed3.py): three rows of ternary codes in one float64 give exactly the
integer sums q @ codesᵀ. The oracle is int64 arithmetic, independent of the float path; the
cases reach the bound where one product stops being exact (Σ|q| = 131071 vs 131072) and go far
past it (the spans), with every row count modulo 3."""
from __future__ import annotations

import numpy as np
import pytest

from bitconv.runtime.packed3 import LIMIT, Packed3, _spans, packed_rows


def oracle(q: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return q.astype(np.int64) @ codes.astype(np.int64).T


@pytest.mark.parametrize("out", [1, 2, 3, 7, 65])
@pytest.mark.parametrize("k", [1, 33, 300])
def test_random_small_activations(out, k):
    rng = np.random.default_rng(out * 1000 + k)
    codes = rng.integers(-1, 2, (out, k)).astype(np.int8)
    q = rng.integers(-128, 128, (5, k)).astype(np.float32)
    got = Packed3.of(codes).dot(q)
    assert got.dtype == np.float32 and got.shape == (5, out)
    assert np.array_equal(got.astype(np.int64), oracle(q, codes))


@pytest.mark.parametrize("extreme", [-128, 127])
def test_the_largest_sums_in_every_part(extreme):
    # all codes one sign and q at its extreme: every part is ±Σ|q|, the worst case for decoding
    k = 4096
    codes = np.ones((6, k), np.int8)
    codes[1::2] = -1
    p = Packed3.of(codes)
    far = np.full((1, k), extreme, np.float32)  # Σ|q| far above one product's bound: spans
    near = far.copy()
    near[0, LIMIT // 128:] = 0  # Σ|q| just below it: one product
    near[0, -1] = extreme  # the cut is not at the end
    near[0, LIMIT // 128 - 1] = 0
    assert abs(near).sum() <= LIMIT and len(_spans(abs(near))) == 1
    for q in (far, near):
        assert np.array_equal(p.dot(q).astype(np.int64), oracle(q, codes))


def test_the_bound_is_where_one_product_stops_sufficing():
    a = np.zeros((1, 2048), np.float32)
    a[0, :1023] = 128
    a[0, 1023] = LIMIT - 1023 * 128  # Σ = LIMIT exactly: one span
    assert _spans(np.abs(a)) == [(0, 2048)]
    a[0, 1024] = 1  # Σ = LIMIT + 1: cut, and no span sums to more than LIMIT
    spans = _spans(np.abs(a))
    assert len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == 2048
    assert all(np.abs(a[:, s:e]).sum() <= LIMIT for s, e in spans)


def test_spans_hold_for_every_token():
    rng = np.random.default_rng(7)
    q = rng.integers(-128, 128, (9, 20000)).astype(np.float32)
    spans = _spans(np.abs(q))
    assert len(spans) >= 20000 * 64 // LIMIT
    assert all(np.abs(q[:, s:e]).sum(axis=1).max() <= LIMIT for s, e in spans)
    codes = rng.integers(-1, 2, (10, 20000)).astype(np.int8)
    assert np.array_equal(Packed3.of(codes).dot(q).astype(np.int64), oracle(q, codes))


def test_layout_and_size():
    codes = np.arange(-5, 5).reshape(10, 1) % 3 - 1  # rows -1, 0, 1, ... in a column
    p = Packed3.of(codes.astype(np.int8))
    assert p.shape == (10, 1) and p.packed.shape == (1, packed_rows(10)) == (1, 4)
    assert p.packed.flags.c_contiguous and p.nbytes == 4 * 8
    c = np.zeros(12)
    c[:10] = codes[:, 0]
    assert np.array_equal(p.packed[0], c[:4] + 2.0**18 * c[4:8] + 2.0**36 * c[8:])
