"""TQ1_0 codecs (tq1_0 lossless, tq1_0-fp16 lossy): golden bytes (formats/tq1_0.md §4), gguf-py
as a peer implementation, properties, exact errors, and packed fixtures read by gguf-py."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.errors import InputError, PackError
from bitconv.formats import tq1_0
from bitconv.formats.registry import CODECS, codec_for, get_codec
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from bitconv.synth.checkpoints import FIXTURES
from bitconv.types import TernaryTensor
from tests.support.cli import cli

QT = GGMLQuantizationType.TQ1_0
LOSSLESS, LOSSY = tq1_0.CODEC, tq1_0.FP16
ZERO = "80" * 48 + "7f" * 4


def encode(codec, codes, m, rows_per_chunk=None):
    step = rows_per_chunk or codes.shape[0]
    chunks = [codes[a:a + step] for a in range(0, codes.shape[0], step)]
    return [np.asarray(x) for x in codec.encode(m, chunks)]


def hexs(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


# --- 1. golden vectors, copied from formats/tq1_0.md §4 (by hand, checked with gguf-py) ---

def _golden_a():
    return np.zeros((1, 256), np.int8)


def _golden_b():
    return (np.arange(256) % 3 - 1).astype(np.int8).reshape(1, 256)


def _golden_c():
    t = np.zeros((2, 512), np.int8)
    t[0, 0], t[0, 127], t[0, 456], t[1, 497], t[1, 511] = -1, 1, 1, 1, -1
    return t


BODY_B = "456ccf" * 10 + "456c" + "94bb31" * 5 + "94" + "3092bb30"
BLOCKS_C = ["2b" + "80" * 30 + "83" + "80" * 16 + "7f" * 4, "80" * 40 + "89" + "80" * 7 + "7f" * 4,
            ZERO, "80" * 48 + "7fd47f7c"]
GOLDEN = {  # name: (codes, multiplier, block bodies, fp16 d of the lossy file, F32 scale)
    "a_all_zero": (_golden_a, 1.0, [ZERO], "003c", "0000803f"),
    "b_e_mod_3": (_golden_b, 0.5, [BODY_B], "0038", "0000003f"),
    "c_two_rows": (_golden_c, 0.0123, BLOCKS_C, "4c22", "f085493c"),
}


def golden_bytes(name, d):
    return hexs(*(body + d for body in GOLDEN[name][2]))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_lossless(name):
    make, m, _, _, scale = GOLDEN[name]
    got = encode(LOSSLESS, make(), m)
    assert b"".join(x.tobytes() for x in got[:-1]) == golden_bytes(name, "003c")
    assert got[-1].tobytes() == bytes.fromhex(scale)
    datas = [np.frombuffer(golden_bytes(name, "003c"), np.uint8),
             np.frombuffer(hexs(scale), np.uint8)]
    codes, mult = LOSSLESS.decode(datas, make().shape)
    assert codes.dtype == np.int8
    np.testing.assert_array_equal(codes, make())
    assert isinstance(mult, np.float32) and mult == np.float32(m)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_lossy(name):
    make, m, _, d, _ = GOLDEN[name]
    got = encode(LOSSY, make(), m)
    assert b"".join(x.tobytes() for x in got) == golden_bytes(name, d)
    assert tq1_0.pack(make(), m).tobytes() == golden_bytes(name, d)
    codes, mult = LOSSY.decode([np.frombuffer(golden_bytes(name, d), np.uint8)], make().shape)
    np.testing.assert_array_equal(codes, make())
    assert mult == np.float32(np.float16(np.float32(m)))
    if name == "c_two_rows":
        assert float(mult) == 0.012298583984375


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_equals_gguf_py_quantizer(name):
    # gguf-py's quantizer on codes * fp16(m): the golden bytes, but d = 0 in an all-zero block
    make, m, bodies, d, _ = GOLDEN[name]
    x = make().astype(np.float32) * np.float32(np.float16(np.float32(m)))
    want = hexs(*(b + ("0000" if b == ZERO else d) for b in bodies))
    assert quantize(x, QT).tobytes() == want


def test_spec_and_registry():
    for codec, name, lossless in ((LOSSLESS, "tq1_0", True), (LOSSY, "tq1_0-fp16", False)):
        s = codec.spec
        assert (s.name, s.ggml_type, s.file_type, s.block_elems, s.block_bytes, s.tail_bytes,
                s.lossless) == (name, 34, 36, 256, 54, 0, lossless)
        assert get_codec(name) is codec and CODECS[name] is codec
    parts = LOSSLESS.parts("blk.0.attn_output.weight", (256, 256))
    assert [(p.name, p.ggml_type, p.shape, p.nbytes) for p in parts] == [
        ("blk.0.attn_output.weight", 34, (256, 256), 256 * 54),
        ("blk.0.attn_output.scale", 0, (1,), 4)]
    name = "blk.0.attn_output.weight"
    assert codec_for(34, name, (256, 256), {name, "blk.0.attn_output.scale"}) is LOSSLESS
    assert codec_for(34, name, (256, 256), {name}) is LOSSY


@pytest.mark.parametrize("shape, n", [((2560, 2560), 1_382_400), ((1, 256), 54)])
def test_nbytes(shape, n):
    assert tq1_0.CODEC.nbytes(shape) == n


# --- 2. properties over random shapes: rows 1..6, K = 256 * (1..4) ---

shapes = st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**32 - 1))
multipliers = st.floats(min_value=2.0**-14, max_value=60000.0, width=32)


def _random_codes(rows, k, seed):
    return np.random.default_rng(seed).integers(-1, 2, size=(rows, 256 * k), dtype=np.int8)


@settings(max_examples=40, deadline=None)
@given(shapes, multipliers, st.data())
def test_lossless_roundtrip_streamed(shape, m, data):
    codes = _random_codes(*shape)
    step = data.draw(st.integers(1, codes.shape[0]))
    datas = encode(LOSSLESS, codes, m, step)
    weight = np.concatenate(datas[:-1])
    assert weight.tobytes() == np.concatenate(encode(LOSSLESS, codes, m)[:-1]).tobytes()
    got, mult = LOSSLESS.decode([weight, datas[-1]], codes.shape)
    np.testing.assert_array_equal(got, codes)
    assert mult.tobytes() == np.float32(m).tobytes()
    deq = dequantize(weight.reshape(codes.shape[0], -1), QT)
    np.testing.assert_array_equal(deq, codes.astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(shapes, multipliers)
def test_lossy_roundtrip_and_gguf_py(shape, m):
    codes = _random_codes(*shape)
    data = np.concatenate(encode(LOSSY, codes, m))
    d = np.float32(np.float16(np.float32(m)))
    got, mult = LOSSY.decode([data], codes.shape)
    np.testing.assert_array_equal(got, codes)
    assert mult == d
    deq = dequantize(data.reshape(codes.shape[0], -1), QT)
    np.testing.assert_array_equal(deq, codes.astype(np.float32) * d)
    if codes.reshape(-1, 256).any(axis=1).all():
        assert quantize(codes.astype(np.float32) * d, QT).tobytes() == data.tobytes()


# --- 3. errors (exact text) ---

@pytest.mark.parametrize("k", [100, 3200, 8640])
def test_check_shape_rejects_k_not_multiple_of_256(k):
    for codec in (LOSSLESS, LOSSY):
        with pytest.raises(PackError) as e:
            codec.check_shape((4, k))
        assert str(e.value) == f"{codec.spec.name} needs in_features % 256 == 0, got {k}"


def test_lossy_refuses_multiplier_fp16_cannot_hold():
    with pytest.raises(PackError) as e:
        list(LOSSY.encode(1e5, [np.ones((1, 256), np.int8)]))
    assert str(e.value) == ("tq1_0-fp16 cannot hold multiplier 100000.0 in an fp16 d "
                            "(it becomes inf); use --format tq1_0")


@pytest.mark.parametrize("offset, byte, where", [(5, 0x01, "qs[5]"), (48 + 2, 0x80, "qh[2]"),
                                                 (40, 0xED, "qs[40]")])
def test_refuses_bytes_that_pack_no_digits(offset, byte, where):
    data = bytearray(golden_bytes("a_all_zero", "003c"))
    data[offset] = byte
    with pytest.raises(InputError) as e:
        LOSSY.decode([np.frombuffer(bytes(data), np.uint8)], (1, 256))
    assert str(e.value) == (f"tq1_0 data holds byte 0x{byte:02x} at {where} of block 0, "
                            "which is not the packing of any ternary digits")


def test_every_byte_is_checked():
    # the 13 qs bytes no v in 0..242 packs to (formats/tq1_0.md §3.1), found here by brute force
    never = sorted(set(range(256)) - {(v * 256 + 242) // 243 for v in range(243)})
    assert len(never) == 13
    for b in range(256):
        data = bytearray(golden_bytes("a_all_zero", "003c"))
        data[0] = b
        if b in never:
            with pytest.raises(InputError):
                LOSSY.decode([np.frombuffer(bytes(data), np.uint8)], (1, 256))
        else:
            LOSSY.decode([np.frombuffer(bytes(data), np.uint8)], (1, 256))


def test_lossless_refuses_d_not_one():
    data = bytearray(golden_bytes("c_two_rows", "003c"))
    data[54 + 52: 54 + 54] = b"\x00\x38"
    with pytest.raises(InputError) as e:
        LOSSLESS.decode([np.frombuffer(bytes(data), np.uint8), np.zeros(4, np.uint8)], (2, 512))
    assert str(e.value) == ("tq1_0 blocks must have d = 1 beside a .scale tensor, "
                            "got d = 0.5 at block 1")


def test_lossy_refuses_mixed_d():
    data = bytearray(golden_bytes("c_two_rows", "4c22"))
    data[3 * 54 + 52: 3 * 54 + 54] = b"\x00\x34"
    with pytest.raises(InputError) as e:
        LOSSY.decode([np.frombuffer(bytes(data), np.uint8)], (2, 512))
    assert str(e.value) == ("tq1_0-fp16 blocks have different scales: d = 0.012298583984375 at "
                            "block 0, 0.25 at block 3; bitconv reads one scale per tensor")
    data[3 * 54 + 52: 3 * 54 + 54] = b"\x4c\x22"
    data[2 * 54 + 52: 2 * 54 + 54] = b"\x00\x00"  # block 2 is all zero: its d has no say
    np.testing.assert_array_equal(LOSSY.decode([np.frombuffer(bytes(data), np.uint8)],
                                               (2, 512))[0], _golden_c())


# --- 4. independent cross-check: exact base-3 division, per element (formats/tq1_0.md §3) ---

def _reference_decode(data: bytes, shape):
    """v = floor(byte * 243 / 256) inverts byte = ceil(v * 256 / 243);
    digit n = v // 3^(4-n) % 3."""
    rows, k = shape
    out = []
    for i in range(rows * k):
        block, e = divmod(i, 256)
        base = block * 54
        if e < 160:
            byte, n = data[base + e % 32], e // 32
        elif e < 240:
            byte, n = data[base + 32 + (e - 160) % 16], (e - 160) // 16
        else:
            byte, n = data[base + 48 + (e - 240) % 4], (e - 240) // 4
        v = byte * 243 // 256
        out.append(v // 3 ** (4 - n) % 3 - 1)
    return np.array(out, np.int8).reshape(shape)


@pytest.mark.parametrize("seed", range(4))
def test_unpack_matches_reference_decoder(seed):
    rng = np.random.default_rng(seed)
    rows, k = int(rng.integers(1, 4)), 256 * int(rng.integers(1, 3))
    nb = rows * k // 256
    v = np.concatenate([rng.integers(0, 243, size=(nb, 48)),
                        3 * rng.integers(0, 81, size=(nb, 4))], axis=1)
    body = ((v * 256 + 242) // 243).astype(np.uint8)
    d = np.full((nb, 1), np.float16(0.5), "<f2").view(np.uint8)
    data = np.concatenate([body, d], axis=1).tobytes()
    got, m = LOSSY.decode([np.frombuffer(data, np.uint8)], (rows, k))
    np.testing.assert_array_equal(got, _reference_decode(data, (rows, k)))
    assert m == np.float32(0.5)
    assert np.concatenate(encode(LOSSY, got, m)).tobytes() == data


# --- 5. packed fixtures: gguf-py reads them; dequantized x .scale == runtime == source ---

@pytest.mark.parametrize("fmt", ["tq1_0", "tq1_0-fp16"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_gguf_py_reads_and_matches_runtime(name, fmt, fixtures_root, packed):
    src = fixtures_root / name
    out = packed(name, fmt)
    reader = GGUFReader(out)
    by_name = {t.name: t for t in reader.tensors}
    assert int(reader.fields["general.file_type"].contents()) == 36
    ours, ref = load_gguf(out), load_checkpoint_weights(src, format=fmt)
    for n, r in ref.tensors.items():
        if not isinstance(r, TernaryTensor):
            continue
        w = dequantize(by_name[n].data, QT)
        scale = by_name.get(n.removesuffix(".weight") + ".scale")
        assert (scale is not None) == (fmt == "tq1_0")
        m = r.multiplier if fmt == "tq1_0" else np.float32(np.float16(r.multiplier))
        if scale is not None:
            w = w * scale.data[0]
        o = ours.tensors[n]
        np.testing.assert_array_equal(w, o.codes.astype(np.float32) * o.multiplier)
        np.testing.assert_array_equal(w, r.codes.astype(np.float32) * m)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_cli_verify_passes_lossless(name, fixtures_root, tmp_path):
    out = tmp_path / "m.gguf"
    r = cli("pack", fixtures_root / name, "--format", "tq1_0", "-o", out)
    assert r.exit_code == 0, r.stderr
    r = cli("verify", out, "--source", fixtures_root / name)
    assert r.exit_code == 0, r.stdout + r.stderr
