"""TL1 codec: golden bytes (formats/tl1.md §6), properties, exact errors, the fixtures end to end."""
from __future__ import annotations

import itertools

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.containers.gguf_reader import read_gguf
from bitconv.containers.gguf_writer import TL1, tensor_nbytes
from bitconv.errors import InputError, PackError
from bitconv.formats import tiling, tl1
from bitconv.formats.registry import CODECS, get_codec
from bitconv.formats.tiling import Tiling
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from bitconv.synth.checkpoints import FIXTURES
from tests.support.cli import cli

# --- 1. golden vectors, copied from formats/tl1.md §6 (derived by hand, not by running tl1) ---


def _golden_a() -> np.ndarray:
    t = np.zeros((32, 16), np.int8)
    t[0, 0], t[17, 5] = 1, -1
    t[8, 8:12] = [-1, -1, 1, 1]
    t[31, 14:16] = [-1, 1]
    return t


def _golden_b() -> np.ndarray:
    t = np.zeros((128, 32), np.int8)
    t[1, 31], t[40, 20], t[100, 2] = -1, 1, -1
    return t


def _golden_c() -> np.ndarray:
    t = np.zeros((64, 16), np.int8)
    t[50, 13] = 1
    return t


TAIL = "00" * 28
GOLDEN = {  # name: (codes, tiling or None for the default, multiplier, hex)
    "a_default": (_golden_a, None, 0.5,
                  "74" + "44" * 48 + "34" + "44" * 22 + "08" + "44" * 54 + "42" + "0000003f" + TAIL),
    "b_two_tiles_two_slabs": (_golden_b, (64, 16, 32), 2.0,
                              "44" * 337 + "43" + "44" * 70 + "74" + "44" * 235 + "41" + "44" * 379
                              + "00000040" + TAIL),
    "c_bm64": (_golden_c, (64, 16, 64), 1.0, "44" * 242 + "54" + "44" * 13 + "0000803f" + TAIL),
}


def _case(name):
    make, params, multiplier, hexbytes = GOLDEN[name]
    codes = make()
    t = Tiling("tl1", *codes.shape, *params) if params else None
    return codes, t, multiplier, bytes.fromhex(hexbytes)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_pack(name):
    codes, t, multiplier, expected = _case(name)
    assert len(expected) == tl1.CODEC.nbytes(codes.shape)
    assert tl1.pack(codes, multiplier, t).tobytes() == expected


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_unpack(name):
    codes, t, multiplier, expected = _case(name)
    got, m = tl1.unpack(np.frombuffer(expected, np.uint8), codes.shape, t)  # read-only input
    assert got.dtype == np.int8 and got.shape == codes.shape
    np.testing.assert_array_equal(got, codes)
    assert isinstance(m, np.float32) and m == np.float32(multiplier)


def test_golden_a_is_the_default_tiling_and_encode_matches():
    codes, _, multiplier, expected = _case("a_default")
    assert tiling.choose("tl1", codes.shape) == Tiling("tl1", 32, 16, 32, 16, 32)
    streamed = b"".join(c.tobytes() for c in tl1.CODEC.encode(multiplier, [codes[:7], codes[7:]]))
    assert streamed == expected


def test_golden_b_default_tiling_differs():
    codes, _, multiplier, expected = _case("b_two_tiles_two_slabs")
    assert tiling.choose("tl1", codes.shape) == Tiling("tl1", 128, 32, 128, 32, 32)
    data = tl1.pack(codes, multiplier)
    assert data[209] == 0x43 and data.tobytes() != expected  # formats/tl1.md §6b


def test_spec_and_registry():
    assert (tl1.SPEC.name, tl1.SPEC.ggml_type, tl1.SPEC.file_type) == ("tl1", 38, 38)
    assert get_codec("tl1") is tl1.CODEC and CODECS["tl1"] is tl1.CODEC
    (part,) = tl1.CODEC.parts("blk.0.attn_q.weight", (2560, 2560))
    assert (part.name, part.ggml_type, part.shape, part.nbytes) == (
        "blk.0.attn_q.weight", TL1, (2560, 2560), 1_638_432)  # reference/bitnet-cpp.md §1.1


@pytest.mark.parametrize("shape", [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912),
                                   (3200, 8640), (32, 16)])
def test_nbytes_is_ggml_nbytes(shape):
    assert tl1.CODEC.nbytes(shape) == tensor_nbytes(TL1, shape) == shape[0] * shape[1] // 4 + 32


# --- 2. properties over random admissible shapes and tilings ---

@st.composite
def tiled_codes(draw):
    M, K = 32 * draw(st.integers(1, 6)), 16 * draw(st.integers(1, 10))
    bm = draw(st.sampled_from([32, 64] if M % 64 == 0 else [32]))
    BM = draw(st.sampled_from([b for b in range(bm, M + 1, bm) if M % b == 0]))
    by = 256 // bm
    BK = draw(st.sampled_from([b for b in range(by, K + 1, by) if K % b == 0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.integers(-1, 2, size=(M, K), dtype=np.int8), Tiling("tl1", M, K, BM, BK, bm)


multipliers = st.floats(min_value=2.0**-20, max_value=1024.0, width=32)


@settings(max_examples=80, deadline=None)
@given(tiled_codes(), multipliers)
def test_roundtrip_any_tiling(case, multiplier):
    codes, t = case
    assert tiling.problem(t) is None
    data = tl1.pack(codes, multiplier, t)
    assert data.dtype == np.uint8 and data.size == tl1.CODEC.nbytes(codes.shape)
    got, m = tl1.unpack(data, codes.shape, t)
    np.testing.assert_array_equal(got, codes)
    assert m == np.float32(multiplier)
    # whole tiles pack independently, in file order
    half = t.M // t.BM // 2 * t.BM
    if half:
        parts = [tl1.pack_body(codes[:half], t), tl1.pack_body(codes[half:], t)]
        assert np.concatenate(parts).tobytes() == data[:-32].tobytes()


@settings(max_examples=40, deadline=None)
@given(tiled_codes(), st.data())
def test_encode_any_chunking_equals_pack(case, data):
    codes, _ = case
    cuts = sorted(data.draw(st.lists(st.integers(1, codes.shape[0] - 1), max_size=3))
                  if codes.shape[0] > 1 else [])
    bounds = [0, *cuts, codes.shape[0]]
    chunks = [codes[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    streamed = b"".join(c.tobytes() for c in tl1.CODEC.encode(0.75, chunks))
    assert streamed == tl1.pack(codes, 0.75).tobytes()
    assert tl1.pack(np.asfortranarray(codes), 0.75).tobytes() == streamed


def test_unpack_ignores_tail_padding():
    codes, _, _, expected = _case("a_default")
    data = np.frombuffer(expected, np.uint8).copy()
    data[-28:] = 0xEE
    got, m = tl1.unpack(data, codes.shape)
    np.testing.assert_array_equal(got, codes)
    assert m == np.float32(0.5)


# --- 3. errors (exact text) ---

def test_unpack_index_above_8():
    codes, _, _, expected = _case("a_default")
    data = bytearray(expected)
    data[49] = 0xC4  # byte 49 = rows 17, pair 2 (high nibble): columns 4..5
    with pytest.raises(InputError) as e:
        tl1.unpack(np.frombuffer(bytes(data), np.uint8), codes.shape)
    assert str(e.value) == "tl1 data holds index 12 (not a ternary pair) at row 17, columns 4..5"
    data[1] = 0x49  # byte 1 = row 1, pair 1 (low nibble): first in row-major order
    with pytest.raises(InputError) as e:
        tl1.unpack(np.frombuffer(bytes(data), np.uint8), codes.shape)
    assert str(e.value) == "tl1 data holds index 9 (not a ternary pair) at row 1, columns 2..3"


@pytest.mark.parametrize("size", [159, 161, 128])
def test_unpack_wrong_length(size):
    with pytest.raises(InputError) as e:
        tl1.unpack(np.zeros(size, np.uint8), (32, 16))
    assert str(e.value) == f"tl1 data is {size} bytes, expected 160 for shape (32, 16)"


def test_check_shape_and_pack_errors():
    with pytest.raises(PackError) as e:
        tl1.CODEC.check_shape((2048, 5460))
    assert str(e.value) == ("tl1 cannot tile shape (2048, 5460): in_features must be a multiple "
                            "of 16, got 5460")
    codes = np.zeros((32, 16), np.int8)
    codes[3, 4] = 2
    with pytest.raises(PackError) as e:
        tl1.pack(codes, 1.0)
    assert str(e.value) == "tl1 codes must be -1, 0 or +1, got 2 at element 52"
    with pytest.raises(PackError) as e:
        tl1.pack(np.zeros((32, 16), np.int8), 1.0, Tiling("tl1", 32, 16, 32, 4, 32))
    assert str(e.value) == ("tl1 cannot use BM=32, BK=4, bm=32 for shape (32, 16): BK must be a "
                            "multiple of by = 8, got 4")
    with pytest.raises(PackError) as e:
        tl1.pack_body(np.zeros((16, 16), np.int8), Tiling("tl1", 32, 16, 32, 16, 32))
    assert str(e.value) == ("tl1 packs whole tiles of BM = 32 rows and K = 16 columns, "
                            "got shape (16, 16)")


# --- 4. the fixtures end to end ---

@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_pack_fixture_writes_gguf_and_kernel_config(name, packed, fixtures_root):
    path = packed(name, "tl1")
    gf = read_gguf(path)
    ternary = [t for t in gf.tensors if t.ggml_type == TL1]
    assert len(ternary) == 14 and gf.kvs["general.file_type"] == 38
    assert all(t.nbytes == tl1.CODEC.nbytes(t.shape) for t in ternary)
    side = path.with_name(path.name + ".kernel_config.ini")
    assert side.read_bytes() == tiling.kernel_config("tl1", [t.shape for t in ternary])
    got = load_gguf(path)
    ref = load_checkpoint_weights(fixtures_root / name, format="tl1")
    for t in ternary:
        np.testing.assert_array_equal(got.tensors[t.name].codes, ref.tensors[t.name].codes)
        assert got.tensors[t.name].multiplier == ref.tensors[t.name].multiplier


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_cli_verify_fixture(name, packed, fixtures_root):
    r = cli("verify", packed(name, "tl1"), "--source", fixtures_root / name)
    assert r.exit_code == 0, r.stderr


def test_gguf_py_refuses_tl1(packed):
    # Type 38 is bitnet.cpp's; gguf-py's enum has no 38 (retired upstream).
    with pytest.raises(ValueError, match=r"38\) is not a valid GGMLQuantizationType"):
        gguf.GGUFReader(packed(next(iter(FIXTURES)), "tl1"))
