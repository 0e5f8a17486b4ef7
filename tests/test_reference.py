"""verify's oracle (model/reference.py): the textbook definitions agree with pack's fast paths on
every fixture, and a fast path broken on purpose is caught by `verify --source` (exit 3)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bitconv.cli import cli
from bitconv.containers.safetensors import MappedFiles
from bitconv.errors import InputError
from bitconv.model import reference, tensors, ternary
from bitconv.model.checkpoint import load_checkpoint
from bitconv.model.families import detect
from bitconv.model.families.base import plan
from bitconv.synth.checkpoints import FIXTURES
from bitconv.types import TernaryTensor

MODELS = Path(__file__).resolve().parents[1] / "models"


def _fast(ck, t, rule, binary, stat):
    """What pack streams for planned tensor `t`, gathered whole."""
    with MappedFiles() as mf:
        if t.kind != "ternary":
            return np.concatenate(list(tensors.dense_chunks(ck, mf, t)))
        src = tensors.ternary_rows(ck, mf, t, rule, binary=binary, scale_stat=stat)
        return src.multiplier, np.concatenate([src.codes(rs) for rs in src.rows])


@pytest.mark.parametrize("variant", [("mean", False), ("median", False), ("mean", True)],
                         ids=["absmean", "median", "binary"])
def test_the_oracle_equals_the_fast_paths_on_every_fixture(fixtures_root, variant):
    """Bit for bit, every tensor of every fixture and of the trained tiny model (bf16 masters):
    the float64-absmean rounding ties the two could legitimately split on (model/reference.py)
    do not occur here."""
    stat, binary = variant
    dirs = [fixtures_root / n for n in FIXTURES] + [MODELS / "bitnet-tiny-shakespeare-bf16"]
    for d in dirs:
        ck = load_checkpoint(d)
        rule = ternary.scale_rule(dict(ck.config))
        for t in plan(ck, detect(ck.config)):
            if stat == "median" and t.scale_source:
                continue  # pack refuses median for packed sources
            want = reference.tensor(ck, t, rule, binary=binary, stat=stat)
            got = _fast(ck, t, rule, binary, stat)
            if isinstance(want, TernaryTensor):
                m, codes = got
                assert m.view(np.uint32) == want.multiplier.view(np.uint32), (d.name, t.source)
                assert np.array_equal(codes, want.codes), (d.name, t.source)
            else:
                assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8),
                                                                  want.view(np.uint8)), t.source


def test_textbook_definitions():
    w = np.array([[0.5, -0.25, 0.2, 0.0], [1.0, -1.0, 0.1, -0.6]], np.float32)
    codes, beta = reference.ternarize(w)
    assert beta == np.float32(np.mean(np.abs(w).astype(np.float64)))
    assert codes.tolist() == [[1, -1, 0, 0], [1, -1, 0, -1]]
    # already ternary: kept, multiplier a (absmean would give 0.75 * 0.5)
    codes, beta = reference.ternarize(np.array([0.5, -0.5, 0.0, 0.5], np.float32))
    assert (codes.tolist(), beta) == ([1, -1, 0, 1], np.float32(0.5))
    # median: the lower middle |w|
    assert reference.ternarize(np.array([0.1, -0.4, 0.3, -0.2], np.float32), "median")[1] \
        == np.float32(0.2)
    # binary: Sign(W - mean W), Sign(0) = -1
    codes, beta = reference.binarize(np.array([[0.5, -0.25, 0.25, 0.0]], np.float32))
    assert codes.tolist() == [[1, -1, 1, -1]] and beta == np.float32(0.25)
    packed = np.array([[0b10_01_00_10]], np.uint8)  # quarters (LSB first): 2, 0, 1, 2
    assert reference.unpack_hf(packed).ravel().tolist() == [1, -1, 0, 1]
    with pytest.raises(InputError, match=r"code 3 .* row 0 \(bits 2-3\), column 0"):
        reference.unpack_hf(np.array([[0b1100]], np.uint8), "w")
    with pytest.raises(InputError, match="NaN"):
        reference.ternarize(np.array([np.nan], np.float32))


def _flip_one(monkeypatch):
    """Break pack's ternarization of latent weights: one code of the first weight flips."""
    real, done = tensors.ternary.ternarize_stored, []

    def broken(*args, **kw):
        out = real(*args, **kw)
        if not done:
            done.append(True)
            out.flat[0] = 1 if out.flat[0] != 1 else 0
        return out
    monkeypatch.setattr(ternary, "ternarize_stored", broken)


def _low_threshold(monkeypatch):
    """Break the threshold of the fast comparison path: 10 % low, codes near +-beta/2 flip."""
    real = ternary.threshold
    monkeypatch.setattr(ternary, "threshold", lambda m: np.float32(real(m) * 0.9))


def _flip_dense(monkeypatch):
    """Break pack's dense conversion: one value of the first dense tensor changes."""
    real, done = tensors.dense_part, []

    def broken(*args, **kw):
        out = real(*args, **kw)
        if not done:
            done.append(True)
            out.view(np.uint8 if out.dtype.itemsize == 1 else f"u{out.dtype.itemsize}").flat[0] ^= 1
        return out
    monkeypatch.setattr(tensors, "dense_part", broken)


@pytest.mark.parametrize("fmt", ["i2s", "tq2_0"])
@pytest.mark.parametrize("breakage", [_flip_one, _low_threshold, _flip_dense])
def test_verify_catches_a_broken_fast_path(tmp_path, monkeypatch, breakage, fmt):
    """With pack's fast path broken (and still broken while verify runs: the oracle does not
    use it), verify --source fails with exit 3; the same pack unbroken passes."""
    src = MODELS / "bitnet-tiny-shakespeare-bf16"  # trained bf16 masters: the threshold path
    runner = CliRunner()
    good = tmp_path / "good.gguf"
    assert runner.invoke(cli, ["pack", str(src), "--format", fmt, "-o", str(good), "-q"]) \
        .exit_code == 0
    breakage(monkeypatch)
    bad = tmp_path / "bad.gguf"
    r = runner.invoke(cli, ["pack", str(src), "--format", fmt, "-o", str(bad), "-q"])
    assert r.exit_code == 0, r.output
    assert bad.read_bytes() != good.read_bytes()  # the breakage did break something
    r = runner.invoke(cli, ["verify", str(bad), "--source", str(src), "--no-drift"])
    assert r.exit_code == 3, r.output
    assert "FAIL  tensors" in r.output
    r = runner.invoke(cli, ["verify", str(good), "--source", str(src), "--no-drift"])
    assert r.exit_code == 0, r.output
