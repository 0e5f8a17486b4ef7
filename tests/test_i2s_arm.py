"""I2_S ARM codec: golden bytes (formats/i2s-arm.md §6), properties, exact errors, a reference
decoder, and how a reader tells it from x86 I2_S (the same type id and size)."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from gguf import GGUFValueType
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.containers.gguf_reader import read_gguf, tensor_bytes
from bitconv.errors import InputError, PackError
from bitconv.formats import i2s, i2s_arm
from bitconv.formats.registry import CODECS, codec_for, get_codec
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from bitconv.types import KV

TAIL0 = "00" * 28


def _golden_a() -> np.ndarray:
    return (np.arange(64) % 3 - 1).astype(np.int8).reshape(1, 64)


def _golden_b() -> np.ndarray:
    t = np.zeros((1, 128), np.int8)
    t[0, 0], t[0, 63], t[0, 64], t[0, 100] = -1, 1, 1, -1
    return t


def _golden_c() -> np.ndarray:
    t = np.zeros((2, 64), np.int8)
    t[0] = 1
    t[1, 37] = -1
    return t


GOLDEN = {
    "a_j_mod_3": (_golden_a, 0.5, "186186" * 5 + "18" + "0000003f" + TAIL0),
    "b_two_blocks": (_golden_b, 2.0,
                     "15" + "55" * 14 + "56" + "95" + "55" * 3 + "51" + "55" * 11
                     + "00000040" + TAIL0),
    "c_two_rows": (_golden_c, 0.0123, "aa" * 16 + "55" * 5 + "51" + "55" * 10 + "f085493c" + TAIL0),
}
# formats/i2s-arm.md §6b: the same tensor as x86 I2_S (one 128-block), for contrast
X86_B = "19" + "55" * 3 + "54" + "55" * 26 + "65" + "00000040" + TAIL0


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_pack_and_unpack(name):
    make, m, hexbytes = GOLDEN[name]
    codes, expected = make(), bytes.fromhex(hexbytes)
    assert len(expected) == i2s_arm.CODEC.nbytes(codes.shape)
    assert i2s_arm.pack(codes, m).tobytes() == expected
    got, gm = i2s_arm.unpack(np.frombuffer(expected, np.uint8), codes.shape)
    np.testing.assert_array_equal(got, codes)
    assert gm == np.float32(m)


def test_same_tensor_differs_from_x86_i2s():
    codes = _golden_b()
    assert i2s.pack(codes, 2.0).tobytes() == bytes.fromhex(X86_B)
    arm = np.frombuffer(bytes.fromhex(GOLDEN["b_two_blocks"][2]), np.uint8)
    wrong, _ = i2s.unpack(arm, codes.shape)  # what an x86 reader makes of an ARM file
    assert not np.array_equal(wrong, codes)


def test_spec_and_registry():
    assert get_codec("i2s-arm") is i2s_arm.CODEC and CODECS["i2s-arm"] is i2s_arm.CODEC
    s = i2s_arm.CODEC.spec
    assert (s.ggml_type, s.file_type, s.block_elems, s.block_bytes, s.tail_bytes) == \
        (36, 40, 64, 16, 32)
    assert i2s_arm.CODEC.nbytes((2560, 2560)) == i2s.CODEC.nbytes((2560, 2560)) == 1_638_432


# --- properties ---

shapes = st.tuples(st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**32 - 1))


def _random(rows: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (rows, 64 * k), dtype=np.int8)


@settings(max_examples=60, deadline=None)
@given(shapes, st.floats(min_value=2.0**-20, max_value=1024.0, width=32), st.data())
def test_roundtrip_and_row_chunks(shape, m, data):
    codes = _random(*shape)
    packed = i2s_arm.pack(codes, m)
    got, gm = i2s_arm.unpack(packed, codes.shape)
    np.testing.assert_array_equal(got, codes)
    assert gm == np.float32(m)
    rows = codes.shape[0]
    cuts = sorted(data.draw(st.lists(st.integers(0, rows), max_size=4)))
    bounds = [0, *cuts, rows]
    streamed = b"".join(c.tobytes() for c in i2s_arm.CODEC.encode(
        m, [codes[a:b] for a, b in pairwise(bounds)]))
    assert streamed == packed.tobytes()
    assert i2s_arm.CODEC.decode([packed], codes.shape)[1] == np.float32(m)


def _reference_decode(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """Per element, straight from formats/i2s-arm.md §3."""
    n = shape[0] * shape[1]
    out = []
    for i in range(n):
        block, j = divmod(i, 64)
        out.append(((data[block * 16 + j % 16] >> (6 - 2 * (j // 16))) & 3) - 1)
    return np.array(out, np.int8).reshape(shape)


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_decoder(seed):
    codes = _random(3, 2 + seed, seed)
    data = i2s_arm.pack(codes, 1.0).tobytes()
    np.testing.assert_array_equal(_reference_decode(data, codes.shape), codes)


# --- errors (exact text) ---

def test_errors():
    with pytest.raises(PackError) as e:
        i2s_arm.CODEC.check_shape((4, 96))
    assert str(e.value) == "i2s-arm needs in_features % 64 == 0, got 96"
    i2s_arm.CODEC.check_shape((3, 64))  # 64 is enough here, unlike x86 I2_S
    bad = np.zeros((1, 64), np.int8)
    bad[0, 9] = -2
    with pytest.raises(PackError) as e:
        i2s_arm.pack(bad, 1.0)
    assert str(e.value) == "i2s-arm codes must be -1, 0 or +1, got -2 at element 9"
    data = bytearray(bytes.fromhex(GOLDEN["c_two_rows"][2]))
    data[16 + 5] = 0x71  # row 1, byte 5, group 1 (bits 5-4) = 11: element 64 + 21
    with pytest.raises(InputError) as e:
        i2s_arm.unpack(np.frombuffer(bytes(data), np.uint8), (2, 64))
    assert str(e.value) == "i2s-arm data holds code 3 (not a ternary value) at element 85"
    with pytest.raises(InputError) as e:
        i2s_arm.unpack(np.zeros(47, np.uint8), (1, 64))
    assert str(e.value) == "i2s-arm data is 47 bytes, expected 48 for shape (1, 64)"


# --- which codec reads a type-36 tensor ---

@pytest.mark.parametrize("kvs, want", [
    (None, i2s),
    ({"general.architecture": "bitnet-b1.58"}, i2s),
    ({"general.architecture": "llama", "llama.tensor_data_layout": "i2s-arm"}, i2s_arm),
    ({"general.architecture": "llama", "llama.tensor_data_layout": "Meta AI original pth"}, i2s),
    ({"general.architecture": "llama", "bitnet.tensor_data_layout": "i2s-arm"}, i2s),
])
def test_codec_for_reads_the_layout_key(kvs, want):
    assert codec_for(36, "blk.0.attn_q.weight", (256, 256), set(), kvs) is want.CODEC


def test_layout_key_kvs():
    assert i2s_arm.CODEC.kvs("llama") == [
        KV("llama.tensor_data_layout", GGUFValueType.STRING, "i2s-arm")]
    assert i2s.CODEC.kvs("llama") == []


def test_packed_tensor_bytes(fixtures_root, packed):
    # the file's tensor data is this layout whatever the metadata says
    src = fixtures_root / "bitnet-b1.58-2B-4T"
    out = packed("bitnet-b1.58-2B-4T", "i2s-arm")
    gf = read_gguf(out)
    t = next(t for t in gf.tensors if t.name == "blk.0.ffn_down.weight")
    ref = load_checkpoint_weights(src).tensors[t.name]
    assert tensor_bytes(gf, t).tobytes() == i2s_arm.pack(ref.codes, ref.multiplier).tobytes()


def test_pack_then_load_gguf(fixtures_root, packed):
    src = fixtures_root / "bitnet-b1.58-2B-4T"
    out = packed("bitnet-b1.58-2B-4T", "i2s-arm")
    assert read_gguf(out).kvs["bitnet-b1.58.tensor_data_layout"] == "i2s-arm"
    a, b = load_checkpoint_weights(src), load_gguf(out)
    for k, t in a.tensors.items():
        if hasattr(t, "codes"):
            np.testing.assert_array_equal(b.tensors[k].codes, t.codes, err_msg=k)
