"""TQ2_0 codecs (tq2_0 lossless, tq2_0-fp16 lossy): golden bytes (formats/tq2_0.md §8), gguf-py
as a peer implementation, properties, exact errors, and packed fixtures read by gguf-py."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.errors import InputError, PackError
from bitconv.formats import tq2_0
from bitconv.formats.registry import CODECS, codec_for, get_codec
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from bitconv.synth.checkpoints import FIXTURES, Shape, make_fixture
from bitconv.types import TernaryTensor
from tests.support.cli import cli

QT = GGMLQuantizationType.TQ2_0
LOSSLESS, LOSSY = tq2_0.CODEC, tq2_0.FP16


def encode(codec, codes, m, rows_per_chunk=None):
    step = rows_per_chunk or codes.shape[0]
    chunks = [codes[a:a + step] for a in range(0, codes.shape[0], step)]
    return [np.asarray(x) for x in codec.encode(m, chunks)]


def hexs(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


# --- 1. golden vectors, copied from formats/tq2_0.md §8 (by hand, checked with gguf-py) ---

def _golden_a():
    return np.zeros((1, 256), np.int8)


def _golden_b():
    return (np.arange(256) % 3 - 1).astype(np.int8).reshape(1, 256)


def _golden_c():
    t = np.zeros((2, 512), np.int8)
    t[0, 0], t[0, 127], t[0, 456], t[1, 497], t[1, 511] = -1, 1, 1, 1, -1
    return t


BODY_B = "186186" * 10 + "1861" + "861861" * 10 + "8618"
BLOCKS_C = ["54" + "55" * 30 + "95" + "55" * 32, "55" * 40 + "65" + "55" * 23, "55" * 64,
            "55" * 49 + "95" + "55" * 13 + "15"]
GOLDEN = {  # name: (codes, multiplier, block bodies, fp16 d of the lossy file, F32 scale)
    "a_all_zero": (_golden_a, 1.0, ["55" * 64], "003c", "0000803f"),
    "b_e_mod_3": (_golden_b, 0.5, [BODY_B], "0038", "0000003f"),
    "c_two_rows": (_golden_c, 0.0123, BLOCKS_C, "4c22", "f085493c"),
}


def golden_bytes(name, d):
    return hexs(*(body + d for body in GOLDEN[name][2]))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_lossless(name):
    make, m, _, _, scale = GOLDEN[name]
    got = encode(LOSSLESS, make(), m)
    weight = b"".join(x.tobytes() for x in got[:-1])
    assert weight == golden_bytes(name, "003c")
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
    assert tq2_0.pack(make(), m).tobytes() == golden_bytes(name, d)
    codes, mult = LOSSY.decode([np.frombuffer(golden_bytes(name, d), np.uint8)], make().shape)
    np.testing.assert_array_equal(codes, make())
    assert mult == np.float32(np.float16(np.float32(m)))


def test_golden_c_lossy_multiplier_is_fp16_rounded():
    # formats/tq2_0.md §8c: 0.0123 -> fp16 0x224C = 0.012298583984375
    _, m = LOSSY.decode([np.frombuffer(golden_bytes("c_two_rows", "4c22"), np.uint8)], (2, 512))
    assert float(m) == 0.012298583984375


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_equals_gguf_py_quantizer(name):
    # gguf-py's quantizer on codes * fp16(m) gives the golden bytes, except d = 0 where a block
    # is all zero (its d = max|x| = 0; formats/tq2_0.md §6.2).
    make, m, bodies, d, _ = GOLDEN[name]
    x = make().astype(np.float32) * np.float32(np.float16(np.float32(m)))
    want = hexs(*(b + ("0000" if set(b) == {"5"} else d) for b in bodies))
    assert quantize(x, QT).tobytes() == want


def test_spec_and_registry():
    for codec, name, lossless in ((LOSSLESS, "tq2_0", True), (LOSSY, "tq2_0-fp16", False)):
        s = codec.spec
        assert (s.name, s.ggml_type, s.file_type, s.block_elems, s.block_bytes, s.tail_bytes,
                s.lossless) == (name, 35, 37, 256, 66, 0, lossless)
        assert get_codec(name) is codec and CODECS[name] is codec
        assert codec.sidecar([("blk.0.attn_q.weight", (256, 256))]) is None
    parts = LOSSLESS.parts("blk.3.ffn_down.weight", (256, 512))
    assert [(p.name, p.ggml_type, p.shape, p.nbytes) for p in parts] == [
        ("blk.3.ffn_down.weight", 35, (256, 512), 256 * 2 * 66),
        ("blk.3.ffn_down.scale", 0, (1,), 4)]
    assert [p.name for p in LOSSY.parts("blk.3.ffn_down.weight", (256, 512))] == [
        "blk.3.ffn_down.weight"]


def test_codec_for_picks_variant_by_companion():
    name = "blk.0.attn_q.weight"
    assert codec_for(35, name, (256, 256), {name, "blk.0.attn_q.scale"}) is LOSSLESS
    assert codec_for(35, name, (256, 256), {name}) is LOSSY


@pytest.mark.parametrize("shape, n", [((2560, 2560), 1_689_600), ((1, 256), 66), ((3, 512), 396)])
def test_nbytes(shape, n):
    assert tq2_0.CODEC.nbytes(shape) == n
    assert sum(p.nbytes for p in LOSSY.parts("w", shape)) == n


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
    assert weight.size == LOSSLESS.parts("w", codes.shape)[0].nbytes
    got, mult = LOSSLESS.decode([weight, datas[-1]], codes.shape)
    np.testing.assert_array_equal(got, codes)
    assert mult == np.float32(m) and mult.tobytes() == np.float32(m).tobytes()
    # a peer reader: gguf-py dequantizes our bytes to codes * d with d = 1 in every block
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
    x = codes.astype(np.float32) * d
    if codes.reshape(-1, 256).any(axis=1).all():  # no all-zero block: gguf-py's bytes exactly
        assert quantize(x, QT).tobytes() == data.tobytes()


def test_lossy_ignores_d_of_all_zero_blocks():
    # what llama.cpp's quantizer writes for a block of zeros (formats/tq2_0.md §6.2)
    data = bytearray(golden_bytes("c_two_rows", "4c22"))
    data[2 * 66 + 64: 2 * 66 + 66] = b"\x00\x00"
    codes, m = LOSSY.decode([np.frombuffer(bytes(data), np.uint8)], (2, 512))
    np.testing.assert_array_equal(codes, _golden_c())
    assert float(m) == 0.012298583984375


def test_unpack_from_readonly_memmap(tmp_path):
    codes = _random_codes(3, 2, seed=7)
    path = tmp_path / "t.bin"
    path.write_bytes(tq2_0.pack(codes, 0.75).tobytes())
    got, d = tq2_0.unpack(np.memmap(path, dtype=np.uint8, mode="r"), (3, 512))
    np.testing.assert_array_equal(got, codes)
    assert d.dtype == np.float16 and (d == np.float16(0.75)).all()


# --- 3. errors (exact text) ---

@pytest.mark.parametrize("k", [100, 384, 3200, 8640])
def test_check_shape_rejects_k_not_multiple_of_256(k):
    for codec in (LOSSLESS, LOSSY):
        with pytest.raises(PackError) as e:
            codec.check_shape((4, k))
        assert str(e.value) == f"{codec.spec.name} needs in_features % 256 == 0, got {k}"
    with pytest.raises(PackError) as e:
        list(LOSSLESS.encode(1.0, [np.zeros((2, k), np.int8)]))
    assert str(e.value) == f"tq2_0 needs in_features % 256 == 0, got {k}"


def test_check_shape_accepts_real_shapes():
    for k in (256, 1536, 2560, 4096, 6912, 14336):
        LOSSLESS.check_shape((3, k))
    with pytest.raises(PackError) as e:
        LOSSLESS.check_shape((256,))
    assert str(e.value) == "tq2_0 packs 2-D weights, got shape (256,)"


def test_pack_rejects_non_ternary():
    codes = np.zeros((1, 256), np.int8)
    codes[0, 5] = 2
    with pytest.raises(PackError) as e:
        list(LOSSY.encode(1.0, [codes]))
    assert str(e.value) == "tq2_0-fp16 codes must be -1, 0 or +1, got 2 at element 5"


@pytest.mark.parametrize("m, becomes", [(1e5, "inf"), (2.0**-26, "0.0")])
def test_lossy_refuses_multiplier_fp16_cannot_hold(m, becomes):
    with pytest.raises(PackError) as e:
        list(LOSSY.encode(m, [np.ones((1, 256), np.int8)]))
    assert str(e.value) == (f"tq2_0-fp16 cannot hold multiplier {float(np.float32(m))!r} in an "
                            f"fp16 d (it becomes {becomes}); use --format tq2_0")
    list(LOSSLESS.encode(m, [np.ones((1, 256), np.int8)]))  # the lossless variant holds it


def _c(d="003c", patch=None):
    data = bytearray(golden_bytes("c_two_rows", d))
    for off, val in (patch or {}).items():
        data[off] = val
    return data


def test_code_3_reports_flat_element():
    data = _c(patch={66 + 40: 0x75})  # formats/tq2_0.md §8d: block 1, byte 40, shift 4 -> 456
    with pytest.raises(InputError) as e:
        LOSSLESS.decode([np.frombuffer(bytes(data), np.uint8), np.zeros(4, np.uint8)], (2, 512))
    assert str(e.value) == "tq2_0 data holds code 3 (not a ternary value) at element 456"


def test_lossless_refuses_d_not_one():
    data = _c(patch={3 * 66 + 64: 0x00, 3 * 66 + 65: 0x38})
    with pytest.raises(InputError) as e:
        LOSSLESS.decode([np.frombuffer(bytes(data), np.uint8), np.zeros(4, np.uint8)], (2, 512))
    assert str(e.value) == ("tq2_0 blocks must have d = 1 beside a .scale tensor, "
                            "got d = 0.5 at block 3")


def test_lossy_refuses_mixed_d():
    data = _c("4c22", patch={3 * 66 + 64: 0x00, 3 * 66 + 65: 0x34})
    with pytest.raises(InputError) as e:
        LOSSY.decode([np.frombuffer(bytes(data), np.uint8)], (2, 512))
    assert str(e.value) == ("tq2_0-fp16 blocks have different scales: d = 0.012298583984375 at "
                            "block 0, 0.25 at block 3; bitconv reads one scale per tensor")


@pytest.mark.parametrize("size", [65, 67, 132])
def test_wrong_length(size):
    with pytest.raises(InputError) as e:
        LOSSY.decode([np.zeros(size, np.uint8)], (1, 256))
    assert str(e.value) == f"tq2_0-fp16 data is {size} bytes, expected 66 for shape (1, 256)"


# --- 4. independent cross-check: a per-element decoder straight from formats/tq2_0.md §4 ---

def _reference_decode(data: bytes, shape):
    rows, k = shape
    out, ds = [], []
    for i in range(rows * k):
        block, e = divmod(i, 256)
        byte = data[block * 66 + (e // 128) * 32 + e % 32]
        out.append(((byte >> (2 * ((e % 128) // 32))) & 3) - 1)
    for block in range(rows * k // 256):
        ds.append(np.frombuffer(data[block * 66 + 64: block * 66 + 66], "<f2")[0])
    return np.array(out, np.int8).reshape(shape), ds


@pytest.mark.parametrize("seed", range(4))
def test_unpack_matches_reference_decoder(seed):
    rng = np.random.default_rng(seed)
    rows, k = int(rng.integers(1, 5)), 256 * int(rng.integers(1, 4))
    fields = rng.integers(0, 3, size=(rows * k // 256, 64, 4))   # every 2-bit field 0..2
    qs = (fields << np.array([0, 2, 4, 6])).sum(-1).astype(np.uint8)
    d = np.full((qs.shape[0], 1), np.float16(rng.random()), "<f2").view(np.uint8)
    data = np.concatenate([qs, d], axis=1).tobytes()
    want, ds = _reference_decode(data, (rows, k))
    got, m = LOSSY.decode([np.frombuffer(data, np.uint8)], (rows, k))
    np.testing.assert_array_equal(got, want)
    assert m == np.float32(ds[0])
    assert np.concatenate(encode(LOSSY, got, m)).tobytes() == data


# --- 5. packed fixtures: gguf-py reads them; dequantized x .scale == runtime == source ---

FAMILIES = sorted(FIXTURES)


@pytest.mark.parametrize("fmt", ["tq2_0", "tq2_0-fp16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_fixture_gguf_py_reads_and_matches_runtime(name, fmt, fixtures_root, packed):
    src = fixtures_root / name
    out = packed(name, fmt)
    reader = GGUFReader(out)
    by_name = {t.name: t for t in reader.tensors}
    assert int(reader.fields["general.file_type"].contents()) == 37
    ours, ref = load_gguf(out), load_checkpoint_weights(src, format=fmt)
    ternary = [n for n, t in ref.tensors.items() if isinstance(t, TernaryTensor)]
    assert ternary
    for n in ternary:
        t = by_name[n]
        assert t.tensor_type == QT
        w = dequantize(t.data, QT)
        scale_name = n.removesuffix(".weight") + ".scale"
        if fmt == "tq2_0":
            s = by_name[scale_name]
            assert s.tensor_type == GGMLQuantizationType.F32 and list(s.shape) == [1]
            w = w * s.data[0]
        else:
            assert scale_name not in by_name
        r, o = ref.tensors[n], ours.tensors[n]
        src_w = r.codes.astype(np.float32) * (r.multiplier if fmt == "tq2_0"
                                              else np.float32(np.float16(r.multiplier)))
        np.testing.assert_array_equal(w, o.codes.astype(np.float32) * o.multiplier)
        np.testing.assert_array_equal(w, src_w)
    assert set(ours.order) == {t.name for t in reader.tensors if not t.name.endswith(".scale")}


@pytest.mark.parametrize("name", FAMILIES)
def test_cli_verify_passes_lossless(name, fixtures_root, tmp_path):
    out = tmp_path / "m.gguf"
    r = cli("pack", fixtures_root / name, "--format", "tq2_0", "-o", out)
    assert r.exit_code == 0, r.stderr
    r = cli("verify", out, "--source", fixtures_root / name)
    assert r.exit_code == 0, r.stdout + r.stderr


@pytest.mark.parametrize("shape, message", [
    (Shape(hidden=384, kv_heads=4, vocab=512),
     "model.layers.0.self_attn.q_proj.weight: tq2_0 needs in_features % 256 == 0, got 384"),
    (Shape(inter=640, kv_heads=4, vocab=512),
     "model.layers.0.mlp.down_proj.weight: tq2_0 needs in_features % 256 == 0, got 640"),
])
def test_cli_pack_refuses_unpackable_shape(shape, message, tmp_path):
    src = make_fixture("bitnet_b1_58-large", tmp_path / "src", shape)
    out = tmp_path / "m.gguf"
    r = cli("pack", src, "--format", "tq2_0", "-o", out)
    assert r.exit_code == 1, (r.stderr, r.exception)
    assert r.stderr == f"Error: {message}\n" and r.stdout == ""
    assert not out.exists() and not list(tmp_path.glob("m.gguf*"))
