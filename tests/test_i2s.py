"""I2_S codec: golden bytes (formats/i2s.md §8), properties, exact errors, a reference decoder."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.errors import InputError, PackError
from bitconv.formats import FORMAT_NAMES, i2s
from bitconv.formats.registry import CODECS, get_codec

# --- 1. golden vectors, copied from formats/i2s.md §8 (derived by hand, not by running i2s) ---

def _golden_a() -> np.ndarray:
    return (np.arange(128) % 3 - 1).astype(np.int8).reshape(1, 128)


def _golden_b() -> np.ndarray:
    return np.zeros((1, 128), np.int8)


def _golden_c() -> np.ndarray:
    t = np.zeros((2, 128), np.int8)
    t[0] = 1
    t[1, 37] = -1
    return t


def _golden_d() -> np.ndarray:
    t = np.zeros((1, 256), np.int8)
    t[0, 0], t[0, 127], t[0, 200] = -1, 1, 1
    return t


TAIL_ZEROS = "00" * 28
GOLDEN = {
    "a_j_mod_3": (_golden_a, 0.5, "244992" * 10 + "2449" + "0000003f" + TAIL_ZEROS),
    "b_all_zero": (_golden_b, 1.0, "55" * 32 + "0000803f" + TAIL_ZEROS),
    "c_two_rows": (
        _golden_c, 0.0123, "aa" * 32 + "55" * 5 + "45" + "55" * 26 + "f085493c" + TAIL_ZEROS
    ),
    "d_two_blocks": (
        _golden_d,
        2.0,
        "15" + "55" * 30 + "56" + "55" * 8 + "59" + "55" * 23 + "00000040" + TAIL_ZEROS,
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_pack(name):
    make, multiplier, hexbytes = GOLDEN[name]
    expected = bytes.fromhex(hexbytes)
    codes = make()
    assert len(expected) == i2s.CODEC.nbytes(codes.shape)
    assert i2s.pack(codes, multiplier).tobytes() == expected
    body = i2s.pack_body(codes).tobytes() + i2s.pack_tail(multiplier).tobytes()
    assert body == expected


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_unpack(name):
    make, multiplier, hexbytes = GOLDEN[name]
    codes = make()
    data = np.frombuffer(bytes.fromhex(hexbytes), np.uint8)   # read-only, like a memmap
    got, m = i2s.unpack(data, codes.shape)
    assert got.dtype == np.int8 and got.shape == codes.shape
    np.testing.assert_array_equal(got, codes)
    assert isinstance(m, np.float32) and m == np.float32(multiplier)


def test_golden_c_multiplier_is_float32_rounded():
    # 0.0123 is not representable; the tail holds the nearest float32 (formats/i2s.md §8c).
    _, m = i2s.unpack(np.frombuffer(bytes.fromhex(GOLDEN["c_two_rows"][2]), np.uint8), (2, 128))
    assert float(m) == 0.012299999594688416


def test_spec_and_registry():
    assert i2s.SPEC.name == "i2s" and i2s.SPEC.ggml_type == 36 and i2s.SPEC.file_type == 40
    assert (i2s.SPEC.block_elems, i2s.SPEC.block_bytes, i2s.SPEC.tail_bytes) == (128, 32, 32)
    assert get_codec("i2s") is i2s.CODEC and CODECS["i2s"] is i2s.CODEC
    with pytest.raises(PackError) as e:
        get_codec("nope")
    assert str(e.value) == f"unknown format 'nope'; choose one of: {', '.join(sorted(FORMAT_NAMES))}"


@pytest.mark.parametrize(
    "shape, n",
    # sizes of bitnet-b1.58-2B-4T tensors quoted in reference/bitnet-cpp.md §1.1
    [((2560, 2560), 1_638_432), ((640, 2560), 409_632), ((6912, 2560), 4_423_712), ((1, 128), 64)],
)
def test_nbytes(shape, n):
    assert i2s.CODEC.nbytes(shape) == n


# --- 2. properties over random shapes: rows 1..9, K = 128 * (1..4) ---

def _random_codes(rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1, 2, size=(rows, 128 * k), dtype=np.int8)


shapes = st.tuples(st.integers(1, 9), st.integers(1, 4), st.integers(0, 2**32 - 1))
multipliers = st.floats(min_value=2.0**-20, max_value=1024.0, width=32)


@settings(max_examples=60, deadline=None)
@given(shapes, multipliers)
def test_roundtrip_size_determinism(shape, multiplier):
    codes = _random_codes(*shape)
    data = i2s.pack(codes, multiplier)
    assert data.dtype == np.uint8 and data.shape == (i2s.CODEC.nbytes(codes.shape),)
    got, m = i2s.unpack(data, codes.shape)
    np.testing.assert_array_equal(got, codes)
    assert m == np.float32(multiplier)
    assert i2s.pack(codes, multiplier).tobytes() == data.tobytes()
    # memory order of the input does not matter, only its values
    assert i2s.pack(np.asfortranarray(codes), multiplier).tobytes() == data.tobytes()


@settings(max_examples=60, deadline=None)
@given(shapes, st.data())
def test_row_chunks_concatenate_to_whole(shape, data):
    codes = _random_codes(*shape)
    rows = codes.shape[0]
    cuts = sorted(data.draw(st.lists(st.integers(0, rows), max_size=4)))
    bounds = [0, *cuts, rows]
    parts = [i2s.pack_body(codes[a:b]) for a, b in itertools.pairwise(bounds)]
    streamed = np.concatenate([*parts, i2s.pack_tail(0.25)])
    assert streamed.tobytes() == i2s.pack(codes, 0.25).tobytes()


def test_unpack_from_readonly_memmap(tmp_path):
    codes = _random_codes(3, 2, seed=7)
    path = tmp_path / "t.bin"
    path.write_bytes(i2s.pack(codes, 0.75).tobytes())
    got, m = i2s.unpack(np.memmap(path, dtype=np.uint8, mode="r"), (3, 256))
    np.testing.assert_array_equal(got, codes)
    assert m == np.float32(0.75)


def test_unpack_ignores_tail_padding():
    # llama-quantize writes only the first 4 tail bytes; the other 28 are unspecified (§6).
    data = i2s.pack(_golden_a(), 0.5)
    data[i2s.CODEC.nbytes((1, 128)) - 28 :] = 0xEE
    got, m = i2s.unpack(data, (1, 128))
    np.testing.assert_array_equal(got, _golden_a())
    assert m == np.float32(0.5)


# --- 3. shape and value errors (exact text) ---

@pytest.mark.parametrize("k", [100, 8640])
def test_check_shape_rejects_k_not_multiple_of_128(k):
    msg = f"i2s needs in_features % 128 == 0, got {k}"
    with pytest.raises(PackError) as e:
        i2s.CODEC.check_shape((4, k))
    assert str(e.value) == msg
    for fn in (i2s.pack_body, lambda c: i2s.pack(c, 1.0)):
        with pytest.raises(PackError) as e:
            fn(np.zeros((2, k), np.int8))
        assert str(e.value) == msg


def test_check_shape_accepts_multiples_of_128():
    for k in (128, 256, 2560, 6912):
        i2s.CODEC.check_shape((3, k))


def test_pack_rejects_non_ternary():
    codes = np.zeros((1, 128), np.int8)
    codes[0, 5] = 2
    with pytest.raises(PackError) as e:
        i2s.pack(codes, 1.0)
    assert str(e.value) == "i2s codes must be -1, 0 or +1, got 2 at element 5"


# --- 4. unpack errors (exact text) ---

def test_unpack_code_3_reports_flat_element():
    data = bytearray(bytes.fromhex(GOLDEN["c_two_rows"][2]))
    data[37] = 0x75  # body byte 37 = block 1, byte 5; 0x45 -> 0x75 sets group 1 to 11: element 165
    with pytest.raises(InputError) as e:
        i2s.unpack(np.frombuffer(bytes(data), np.uint8), (2, 128))
    assert str(e.value) == "i2s data holds code 3 (not a ternary value) at element 165"


def test_unpack_code_3_first_in_element_order_not_byte_order():
    data = bytearray(bytes.fromhex(GOLDEN["b_all_zero"][2]))
    data[0] = 0x57  # byte 0, group 3 (bits 1-0) = 11: element 96
    data[1] = 0x75  # byte 1, group 1 (bits 5-4) = 11: element 33, comes first in the tensor
    with pytest.raises(InputError) as e:
        i2s.unpack(np.frombuffer(bytes(data), np.uint8), (1, 128))
    assert str(e.value) == "i2s data holds code 3 (not a ternary value) at element 33"


@pytest.mark.parametrize("size", [63, 65, 32])
def test_unpack_wrong_length(size):
    with pytest.raises(InputError) as e:
        i2s.unpack(np.zeros(size, np.uint8), (1, 128))
    assert str(e.value) == f"i2s data is {size} bytes, expected 64 for shape (1, 128)"


# --- 5. independent cross-check: a per-element decoder straight from formats/i2s.md §4 ---

def _reference_decode(data: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    rows, k = shape
    n = rows * k
    flat = []
    for i in range(n):
        block, j = divmod(i, 128)
        byte = data[block * 32 + j % 32]
        flat.append(((byte >> (6 - 2 * (j // 32))) & 3) - 1)
    (multiplier,) = np.frombuffer(data[n // 4 : n // 4 + 4], "<f4")
    return np.array(flat, np.int8).reshape(shape), float(multiplier)


@pytest.mark.parametrize("seed", range(5))
def test_unpack_matches_reference_decoder(seed):
    rng = np.random.default_rng(seed)
    rows, k = int(rng.integers(1, 10)), 128 * int(rng.integers(1, 5))
    # random bytes whose every 2-bit field is 0, 1 or 2
    fields = rng.integers(0, 3, size=(rows * k // 4, 4))
    body = fields[:, 0] << 6 | fields[:, 1] << 4 | fields[:, 2] << 2 | fields[:, 3]
    body = body.astype(np.uint8)
    data = body.tobytes() + np.float32(rng.random()).tobytes() + bytes(28)
    want, want_m = _reference_decode(data, (rows, k))
    got, got_m = i2s.unpack(np.frombuffer(data, np.uint8), (rows, k))
    np.testing.assert_array_equal(got, want)
    assert float(got_m) == want_m
    assert i2s.pack(got, got_m).tobytes() == data
