"""TL2 codec: golden bytes (formats/tl2.md §5), properties, exact errors, the fixtures end to end."""
from __future__ import annotations

import itertools

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.containers.gguf_reader import read_gguf
from bitconv.containers.gguf_writer import TL2, tensor_nbytes
from bitconv.errors import InputError, PackError
from bitconv.formats import tiling, tl2
from bitconv.formats.registry import CODECS, get_codec
from bitconv.formats.tiling import Tiling
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from bitconv.synth.checkpoints import FIXTURES
from tests.support.cli import cli

# --- 1. golden vectors, copied from formats/tl2.md §5 (derived by hand, not by running tl2) ---


def _golden_a() -> np.ndarray:
    t = np.zeros((32, 24), np.int8)
    t[0, 0:6] = [1, 0, 0, 0, 0, -1]
    t[20, 6:9] = [1, 1, 1]
    t[31, 9:12] = [-1, -1, -1]
    t[16, 12:15] = [0, -1, 1]
    t[9, 21:24] = [-1, 1, 1]
    return t


def _golden_b() -> np.ndarray:
    t = np.zeros((64, 80), np.int8)
    t[63, 24:27] = [-1, 0, 1]
    t[33, 45:48] = [1, -1, 0]
    t[2, 48:50] = [1, -1]
    t[45, 79] = -1
    return t


def _golden_c() -> np.ndarray:
    t = np.zeros((32, 256), np.int8)
    t[5, 99:102] = [1, 1, 0]
    t[30, 191], t[16, 255] = -1, 1
    return t


SECTIONS = {  # name: (codes, BM, BK, (magnitudes, signs, pairs) hex)
    "a_three_only": (_golden_a, 32, 24, (
        "91" + "00" * 43 + "d0" + "00" * 18 + "0d" + "00" * 8 + "20" + "00" * 40 + "05" + "00" * 14,
        "4020" + "00" * 16 + "02" + "00" * 12 + "01",
        "")),
    "b_two_tiles": (_golden_b, 32, 48, (
        "00" * 415 + "80" + "00" * 65 + "06" + "00" * 30,
        "00" * 127 + "40",
        "44" * 2 + "64" + "44" * 498 + "43" + "44" * 10)),
}
GOLDEN_C = ("00" * 517 + "0c" + "00" * 504 + "01" + "00"      # magnitudes
            + "00" * 252 + "01" + "00" * 3                    # signs
            + "44" * 488 + "45" + "44" * 23                   # pairs
            + "00" * 256 + "f085493c" + "00" * 28)            # padding, tail


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_golden_sections(name):
    make, BM, BK, expected = SECTIONS[name]
    codes = make()
    t = Tiling("tl2", *codes.shape, BM, BK, 32)
    assert tiling.problem(t) is None
    got = tl2.pack_sections(codes, t)
    assert [g.tobytes().hex() for g in got] == [bytes.fromhex(h).hex() for h in expected]
    assert [g.size for g in got] == list(tl2.payload(t))


def test_golden_c_pack_and_unpack():
    codes = _golden_c()
    expected = bytes.fromhex(GOLDEN_C)
    assert tiling.choose("tl2", codes.shape) == Tiling("tl2", 32, 256, 32, 96, 32)
    assert len(expected) == tl2.CODEC.nbytes(codes.shape) == 2080
    assert tl2.pack(codes, 0.0123).tobytes() == expected
    streamed = b"".join(c.tobytes() for c in tl2.CODEC.encode(0.0123, [codes[:5], codes[5:]]))
    assert streamed == expected
    got, m = tl2.unpack(np.frombuffer(expected, np.uint8), codes.shape)  # read-only input
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, codes)
    assert isinstance(m, np.float32) and float(m) == 0.012299999594688416


def test_spec_and_registry():
    assert (tl2.SPEC.name, tl2.SPEC.ggml_type, tl2.SPEC.file_type) == ("tl2", 39, 39)
    assert get_codec("tl2") is tl2.CODEC and CODECS["tl2"] is tl2.CODEC
    (part,) = tl2.CODEC.parts("blk.0.ffn_down.weight", (3200, 8640))
    # reference/bitnet-cpp.md §2.1: 3B ffn_down, 5,760,000 B payload, ggml_nbytes 5,794,176
    assert (part.ggml_type, part.shape, part.nbytes) == (TL2, (3200, 8640), 5_794_176)
    assert sum(tl2.payload(tiling.choose("tl2", (3200, 8640)))) == 5_760_000


@pytest.mark.parametrize("shape", [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912),
                                   (3200, 3200), (32, 256), (96, 1000)])
def test_nbytes_is_ggml_nbytes(shape):
    assert tl2.CODEC.nbytes(shape) == tensor_nbytes(TL2, shape)
    assert sum(tl2.payload(tiling.choose("tl2", shape))) <= tl2.CODEC.nbytes(shape) - 32


# --- 2. properties over random admissible shapes and tilings ---

@st.composite
def tiled_codes(draw):
    M, K = 32 * draw(st.integers(1, 4)), 8 * draw(st.integers(32, 80))
    BM = draw(st.sampled_from([b for b in range(32, M + 1, 32) if M % b == 0]))
    valid = [bk for bk in range(24, K + 1, 24)
             if tiling.problem(Tiling("tl2", M, K, BM, bk, 32)) is None]
    BK = draw(st.sampled_from(valid))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.integers(-1, 2, size=(M, K), dtype=np.int8), Tiling("tl2", M, K, BM, BK, 32)


@settings(max_examples=80, deadline=None)
@given(tiled_codes(), st.floats(min_value=2.0**-20, max_value=1024.0, width=32))
def test_roundtrip_any_tiling(case, multiplier):
    codes, t = case
    data = tl2.pack(codes, multiplier, t)
    assert data.dtype == np.uint8 and data.size == tl2.CODEC.nbytes(codes.shape)
    got, m = tl2.unpack(data, codes.shape, t)
    np.testing.assert_array_equal(got, codes)
    assert m == np.float32(multiplier)
    assert not data[sum(tl2.payload(t)):-32].any() and not data[-28:].any()


@settings(max_examples=40, deadline=None)
@given(tiled_codes(), st.data())
def test_encode_any_chunking_equals_pack(case, data):
    codes, _ = case
    cuts = sorted(data.draw(st.lists(st.integers(1, codes.shape[0] - 1), max_size=3))
                  if codes.shape[0] > 1 else [])
    bounds = [0, *cuts, codes.shape[0]]
    chunks = [codes[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    streamed = b"".join(c.tobytes() for c in tl2.CODEC.encode(1.5, chunks))
    assert streamed == tl2.pack(codes, 1.5).tobytes()


def test_every_triple_value():
    # all 27 triples in one row each (rows 27..31 zero): magnitude and sign decode exactly
    codes = np.zeros((32, 256), np.int8)
    v = np.arange(27)
    codes[:27, :3] = np.stack([v // 9, v // 3 % 3, v % 3], axis=1) - 1
    got, _ = tl2.unpack(tl2.pack(codes, 1.0), codes.shape)
    np.testing.assert_array_equal(got, codes)


def test_sign_bit_on_zero_magnitude_is_refused():
    # bitnet.cpp's converter clears the sign of a zero triple (sign(0) + 2 > 1 -> 0), and so
    # does bitconv: a set one is data no tiling writes (formats/tl2.md §2)
    data = np.frombuffer(bytes.fromhex(GOLDEN_C), np.uint8).copy()
    data[1024] |= 0x80  # word 0 bit 7: triple 4 of slab 0, row 0, magnitude 0
    with pytest.raises(InputError) as e:
        tl2.unpack(data, (32, 256))
    assert str(e.value) == ("tl2 data holds a sign bit on a zero triple (not what any tiling "
                            "writes) at row 0, columns 12..14")


def test_non_zero_padding_is_refused():
    # 5c: payload 1792 bytes, zeros up to 2048 (the ggml_nbytes formula), then the tail
    data = np.frombuffer(bytes.fromhex(GOLDEN_C), np.uint8).copy()
    data[1900] = 0x5A
    with pytest.raises(InputError) as e:
        tl2.unpack(data, (32, 256))
    assert str(e.value) == ("tl2 data has byte 0x5a at offset 1900 in its zero padding (bytes "
                            "1792..2047): not what any tiling writes")
    data[1900] = 0
    data[2048 + 4:] = 0xFF  # the 28 bytes after the multiplier are not checked (tl2.md §4)
    got, m = tl2.unpack(data, (32, 256))
    np.testing.assert_array_equal(got, _golden_c())
    assert m == np.float32(0.0123)


def test_decode_needs_the_files_tiling():
    data = np.frombuffer(bytes.fromhex(GOLDEN_C), np.uint8)
    with pytest.raises(InputError) as e:
        tl2.CODEC.decode([data], (32, 256))
    assert str(e.value) == ("tl2: no tiling (BM, BK, bm) given for shape (32, 256): a TL tensor "
                            "cannot be decoded without the kernel configuration it was written "
                            "with")
    got, _ = tl2.CODEC.decode([data], (32, 256), Tiling("tl2", 32, 256, 32, 96, 32))
    np.testing.assert_array_equal(got, _golden_c())
    with pytest.raises(InputError, match="in_features % BK must be a multiple of 32"):
        tl2.CODEC.decode([data], (32, 256), Tiling("tl2", 32, 256, 32, 48, 32))


# --- 3. errors (exact text) ---

def test_unpack_bad_magnitude_and_pair():
    data = bytearray(bytes.fromhex(GOLDEN_C))
    data[517] = 0x0E  # row 5, triple 33 -> magnitude 14
    with pytest.raises(InputError) as e:
        tl2.unpack(np.frombuffer(bytes(data), np.uint8), (32, 256))
    assert str(e.value) == ("tl2 data holds magnitude index 14 (not a ternary triple) at row 5, "
                            "columns 99..101")
    data[517] = 0x0C
    data[1768] = 0x49  # row 16, tail pair 31 -> index 9
    with pytest.raises(InputError) as e:
        tl2.unpack(np.frombuffer(bytes(data), np.uint8), (32, 256))
    assert str(e.value) == "tl2 data holds index 9 (not a ternary pair) at row 16, columns 254..255"


@pytest.mark.parametrize("size", [2079, 2081, 1792])
def test_unpack_wrong_length(size):
    with pytest.raises(InputError) as e:
        tl2.unpack(np.zeros(size, np.uint8), (32, 256))
    assert str(e.value) == f"tl2 data is {size} bytes, expected 2080 for shape (32, 256)"


def test_shape_errors():
    with pytest.raises(PackError) as e:
        tl2.CODEC.check_shape((32, 80))
    assert str(e.value) == "tl2 needs in_features >= 256 (ggml_nbytes' TL2 size formula), got 80"
    with pytest.raises(PackError) as e:
        tl2.CODEC.check_shape((5460, 2048))
    assert str(e.value) == ("tl2 cannot tile shape (5460, 2048): out_features must be a multiple "
                            "of 32, got 5460")
    with pytest.raises(PackError) as e:
        tl2.pack(np.zeros((32, 256), np.int8), 1.0, Tiling("tl2", 32, 256, 32, 48, 32))
    assert str(e.value) == ("tl2 cannot use BM=32, BK=48, bm=32 for shape (32, 256): in_features "
                            "% BK must be a multiple of 32, got 16")
    codes = np.zeros((32, 256), np.int8)
    codes[1, 2] = -2
    with pytest.raises(PackError) as e:
        list(tl2.CODEC.encode(1.0, [codes]))
    assert str(e.value) == "tl2 codes must be -1, 0 or +1, got -2 at element 258"


# --- 4. the fixtures end to end ---

@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_pack_fixture_writes_gguf_and_kernel_config(name, packed, fixtures_root):
    path = packed(name, "tl2")
    gf = read_gguf(path)
    ternary = [t for t in gf.tensors if t.ggml_type == TL2]
    assert len(ternary) == 14 and gf.kvs["general.file_type"] == 39
    assert all(t.nbytes == tl2.CODEC.nbytes(t.shape) for t in ternary)
    side = path.with_name(path.name + ".kernel_config.ini")
    assert side.read_bytes() == tiling.kernel_config("tl2", [t.shape for t in ternary])
    got = load_gguf(path)
    ref = load_checkpoint_weights(fixtures_root / name, format="tl2")
    for t in ternary:
        np.testing.assert_array_equal(got.tensors[t.name].codes, ref.tensors[t.name].codes)
        assert got.tensors[t.name].multiplier == ref.tensors[t.name].multiplier


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_cli_verify_fixture(name, packed, fixtures_root):
    r = cli("verify", packed(name, "tl2"), "--source", fixtures_root / name)
    assert r.exit_code == 0, r.stderr


def test_gguf_py_misreads_tl2(packed):
    # Type 39 is MXFP4 upstream (gguf 0.19): gguf-py sizes our tensor as 32-element/17-byte
    # blocks and fails to shape it.
    assert gguf.GGMLQuantizationType(39).name == "MXFP4"
    with pytest.raises(ValueError, match="cannot reshape array of size"):
        gguf.GGUFReader(packed(next(iter(FIXTURES)), "tl2"))
