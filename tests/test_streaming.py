"""The fast data paths of `pack` against their plain-numpy definitions, and thread-count
independence of the output bytes.

The references here are numpy's own casts and arithmetic on float32 (DESIGN.md §3), not the
code under test: bf16 -> f16 must equal `np.float16(float32 value)`; bf16 and f32 codes must
equal rint/clip of w / m in float32; HF unpacking must equal the shift-and-mask definition
of hf.md §1.1 written out per quarter block.
"""
from __future__ import annotations

import threading
from itertools import pairwise

import numpy as np
import pytest

from bitconv.containers import atomic, safetensors
from bitconv.errors import InputError
from bitconv.formats import hf
from bitconv.formats.registry import CODECS
from bitconv.model import ternary
from bitconv.model.dense import dense_part
from bitconv.stages.pack import pack
from bitconv.synth.checkpoints import Shape, make_fixture
from bitconv.workers import Workers
from tests.support.cli import cli

EVERY_BF16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
AS_F32 = (EVERY_BF16.astype(np.uint32) << 16).view(np.float32)


def test_bf16_to_f16_equals_numpy_cast_on_every_bf16_value():
    ok = np.isfinite(AS_F32) & (np.abs(AS_F32) <= 65504)
    got = dense_part(EVERY_BF16[ok], "BF16", np.float16, "w", "token_embd.weight")
    assert np.array_equal(got.view(np.uint16), AS_F32[ok].astype(np.float16).view(np.uint16))
    assert ok.sum() == 2 * (0x477F + 1)  # every finite |bf16| up to 65280, both signs


@pytest.mark.parametrize("bits, message", [(0x7F80, "NaN or Inf"), (0xFFC1, "NaN or Inf"),
                                           (0x4780, "float16 range"), (0xC780, "float16 range")])
def test_bf16_to_f16_refuses_what_f16_cannot_hold(bits, message):
    with pytest.raises(InputError, match=message):
        dense_part(np.array([0x3F80, bits], np.uint16), "BF16", np.float16, "w", "t")


@pytest.mark.parametrize("m", [np.float32(0.0153), np.float32(1.0), np.float32(2.0 ** -20),
                               np.float32(3.0e4)])
def test_bf16_codes_equal_float32_ternarization_on_every_bf16_value(m):
    finite = np.isfinite(AS_F32)
    with np.errstate(over="ignore"):
        q = np.clip(np.rint(np.divide(AS_F32[finite], m, dtype=np.float32)), -1, 1)
    got = ternary.ternarize_stored(EVERY_BF16[finite], "BF16", m, False)
    assert np.array_equal(got, q.astype(np.int8))
    # ties: exactly half the multiplier rounds to 0 (half to even), just above it to 1
    half = np.float32(m) / np.float32(2)
    assert ternary.ternarize_stored(np.array([half], np.float32), "F32", m, False)[0] == 0


def test_scan_parts_merge_to_the_float64_absmean():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((300, 700), dtype=np.float32) * np.float32(0.02)
    scan = ternary.AbsmeanScan("w")
    for rows in np.array_split(np.arange(300), 7):
        scan.merge(ternary.scan_part(w[rows], "F32"))
    m, already = scan.result()
    assert not already
    assert m == np.float32(np.abs(w.astype(np.float64)).mean())  # same float32 after rounding
    assert (scan.nonzero, scan.max_abs) == (np.count_nonzero(w), np.abs(w).max())


def test_hf_unpack_equals_the_quarter_block_definition():
    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 2, size=(4 * 37, 50)).astype(np.int8)   # 4 quarters of 37 rows
    packed = np.zeros((37, 50), np.uint8)
    for i in range(4):                                                  # hf.md §1.1
        packed |= ((codes[i * 37:(i + 1) * 37] + 1).astype(np.uint8) << (2 * i))
    for start, stop in [(0, 148), (30, 80), (36, 38), (111, 148), (5, 6)]:
        assert np.array_equal(hf.unpack_rows(packed, start, stop), codes[start:stop])
    packed[20, 9] |= 0b11 << 4                                          # a code 3 in quarter 2
    with pytest.raises(InputError, match=r"row 20 \(bits 4-5\), column 9"):
        hf.unpack_rows(packed, 70, 100, "w")


def test_workers_map_keeps_order_and_raises_the_first_failure():
    with Workers(3, ahead=4) as w:
        assert list(w.map(lambda x: x * x, range(50))) == [x * x for x in range(50)]

        def boom(x):
            if x == 17:
                raise ValueError("17")
            return x
        with pytest.raises(ValueError, match="17"):
            list(w.map(boom, range(50)))


def test_background_stage_propagates_errors_and_stops_when_abandoned():
    def stage():
        yield 1
        raise InputError("bad chunk")
    with Workers(2) as w:
        it = w.background(stage())
        assert next(it) == 1
        with pytest.raises(InputError, match="bad chunk"):
            next(it)
        started = threading.active_count()
        endless = w.background(iter(range(10 ** 9)))
        assert next(endless) == 0
        endless.close()                       # the caller gave up: the stage thread must end
        assert threading.active_count() <= started


@pytest.mark.parametrize("fmt", ["i2s", "tl2", "tq2_0"])
@pytest.mark.parametrize("name", ["bitnet-b1.58-2B-4T", "bitnet-b1.58-2B-4T-bf16",
                                  "Llama3-8B-1.58-100B-tokens", "bitnet_b1_58-large"])
def test_output_bytes_do_not_depend_on_the_thread_count_or_write_behind(name, fmt, tmp_path,
                                                                       monkeypatch):
    """Threads 1, 2, 5 with write-behind flushing every 64 KiB (so each output is handed to
    the disk in many early ranges: a spy counts them), then write-behind off and write-behind
    unavailable (no sync_file_range): the same bytes every time. The input is read ahead in
    small windows that end off page boundaries (MappedFiles._prefetch)."""
    import bitconv.model.tensors as pk
    src = make_fixture(name, tmp_path / name, Shape(hidden=512, inter=768, heads=8, kv_heads=2,
                                                     vocab=1024 if "large" not in name else 512))
    monkeypatch.setattr(pk, "CHUNK_ELEMS", 20000)  # many chunks per tensor: real interleaving
    monkeypatch.setattr(safetensors, "PREFETCH", 5 * 4096 + 100)  # many read-ahead windows
    monkeypatch.delenv("BITCONV_WRITE_BEHIND", raising=False)
    monkeypatch.setattr(atomic, "WRITE_BEHIND", 1 << 16)
    calls: list[tuple[int, int, int]] = []
    real = atomic._sync_range

    def spy(fd, off, n, flags):
        calls.append((off, n, flags))
        if real is not None:
            real(fd, off, n, flags)
    monkeypatch.setattr(atomic, "_sync_range", spy)
    outs = [pack(src, format=fmt, out=tmp_path / f"{n}.gguf", threads=n).path for n in (1, 2, 5)]
    kicks = [(off, n) for off, n, flags in calls if flags == atomic._KICK]
    starts = [i for i, (off, _) in enumerate(kicks) if off == 0] + [len(kicks)]
    assert len(starts) == 4 and all(b - a > 4 for a, b in pairwise(starts))
    for a, b in pairwise(starts):  # each output's early ranges tile its start
        assert all(kicks[i][0] + kicks[i][1] == kicks[i + 1][0] for i in range(a, b - 1))
    assert len(calls) > len(kicks)  # older ranges were waited for too
    flushed = len(calls)
    monkeypatch.setenv("BITCONV_WRITE_BEHIND", "0")
    outs.append(pack(src, format=fmt, out=tmp_path / "off.gguf", threads=2).path)
    monkeypatch.delenv("BITCONV_WRITE_BEHIND")
    monkeypatch.setattr(atomic, "_sync_range", None)
    outs.append(pack(src, format=fmt, out=tmp_path / "none.gguf", threads=2).path)
    assert len(calls) == flushed  # off and unavailable: nothing flushed early
    assert len({o.read_bytes() for o in outs}) == 1


@pytest.mark.parametrize("fmt", sorted(n for n, c in CODECS.items()
                                       if c.spec.row_local))
def test_row_local_codecs_encode_chunk_by_chunk(fmt):
    """The promise `pack` relies on to encode chunks in parallel (FormatSpec.row_local): the
    stream equals each chunk encoded alone, then what encode gives for no rows."""
    codec = CODECS[fmt]
    rng = np.random.default_rng(5)
    codes = rng.choice(np.array(codec.spec.codes, np.int8), size=(24, 512))  # binary for q1_0
    m = np.float32(0.75)  # exact in fp16 too
    whole = b"".join(a.tobytes() for a in codec.encode(m, iter([codes[:8], codes[8:16], codes[16:]])))
    trailer = b"".join(a.tobytes() for a in codec.encode(m, iter(())))
    pieces = []
    for c in (codes[:8], codes[8:16], codes[16:]):
        alone = b"".join(a.tobytes() for a in codec.encode(m, iter([c])))
        assert alone.endswith(trailer)
        pieces.append(alone[:len(alone) - len(trailer)])
    assert whole == b"".join(pieces) + trailer


@pytest.mark.parametrize("m", [np.float32(0.0153), np.float32(1e-5), np.float32(0.7),
                               np.float32(3.3e4), np.float32(1.0000001)])
def test_threshold_codes_equal_float32_ternarization_near_the_boundary(m):
    t = np.float32(m) * np.float32(0.5)
    near = t.view(np.uint32) + np.arange(-3000, 3000, dtype=np.int64)   # every float32 near m/2
    w = near.astype(np.uint32).view(np.float32)
    w = np.concatenate([w, -w, [0, 1e30, -1e30, m, -m, 1.5 * m]]).astype(np.float32)
    with np.errstate(over="ignore"):
        ref = np.clip(np.rint(np.divide(w, m, dtype=np.float32)), -1, 1).astype(np.int8)
        w16 = w.astype(np.float16)  # beyond 65504 -> inf, which still ternarizes to +-1
        ref16 = np.clip(np.rint(np.divide(w16.astype(np.float32), m, dtype=np.float32)), -1, 1)
    assert np.array_equal(ternary.ternarize_stored(w, "F32", m, False), ref)
    assert np.array_equal(ternary.ternarize_stored(w16, "F16", m, False), ref16.astype(np.int8))


@pytest.mark.parametrize("value", ["abc", "-1", "nan", ""])
def test_a_bad_write_behind_setting_is_one_line(value, tmp_path, monkeypatch):
    src = make_fixture("bitnet_b1_58-large", tmp_path / "src",
                       Shape(hidden=256, inter=512, heads=4, kv_heads=4, vocab=512))
    monkeypatch.setenv("BITCONV_WRITE_BEHIND", value)
    out = tmp_path / "o.gguf"
    r = cli("pack", src, "-o", out, "-q")
    assert r.exit_code == 1 and r.stdout == "", (r.exit_code, r.output)
    assert r.stderr.splitlines() == [(f"Error: BITCONV_WRITE_BEHIND={value!r}: expected "
                                      "megabytes per flushed range, a number >= 0 (0 turns "
                                      "write-behind off)")]
    assert list(tmp_path.glob("o.gguf*")) == []
