"""GGUF container: our writer and reader, checked against the independent gguf-py (PyPI) ones."""
from __future__ import annotations

import struct
import time

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as V

from bitconv.containers.gguf_reader import read_gguf, tensor_array, tensor_bytes
from bitconv.containers.gguf_writer import (
    BF16,
    F16,
    F32,
    I2_S,
    TL1,
    TL2,
    TQ1_0,
    TQ2_0,
    GGUFWriter,
    TensorInfo,
    tensor_nbytes,
)
from bitconv.errors import InputError, PackError
from bitconv.types import KV

RNG = np.random.default_rng(0)

KVS = [
    KV("general.architecture", V.STRING, "bitnet"),
    KV("general.name", V.STRING, "Tëst-модель 模型 ✓"),
    KV("tokenizer.ggml.add_bos_token", V.BOOL, True),
    KV("tokenizer.ggml.add_eos_token", V.BOOL, False),
    KV("bitnet.block_count", V.UINT32, 30),
    KV("bitnet.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
    KV("test.u8", V.UINT8, 255),
    KV("test.i64", V.INT64, -(2**40)),
    KV("test.u64", V.UINT64, 2**63 + 5),
    KV("test.f64", V.FLOAT64, 0.1),
    KV("tokenizer.ggml.tokens", V.ARRAY, ["<s>", "</s>", "▁héllo", "", "😀"], V.STRING),
    KV("tokenizer.ggml.token_type", V.ARRAY, [3, 3, 1, 1, 6], V.INT32),
    KV("tokenizer.ggml.scores", V.ARRAY, np.array([0.0, -1.5, 2.25, 1e-3, -7.0]), V.FLOAT32),
    KV("test.u32s", V.ARRAY, np.arange(4, dtype=np.uint32), V.UINT32),
]


def _expected(kv: KV):
    """The value a reader returns, after rounding to the stored type."""
    if kv.vtype == V.FLOAT32:
        return float(np.float32(kv.value))
    if kv.vtype == V.ARRAY and kv.subtype != V.STRING:
        dtype = {V.INT32: np.int32, V.FLOAT32: np.float32, V.UINT32: np.uint32}[kv.subtype]
        return np.asarray(kv.value).astype(dtype).tolist()
    return kv.value


def _write(path, kvs, tensors, alignment=32, chunks=None):
    """Write `tensors` {name: (ggml_type, shape, raw bytes or array)}; chunks[name] splits the data."""
    chunks = chunks or {}
    infos = [TensorInfo(n, shape, t, tensor_nbytes(t, shape)) for n, (t, shape, _) in tensors.items()]
    with open(path, "wb") as f:
        w = GGUFWriter(f, kvs, infos, alignment=alignment)
        for name, (_, _, data) in tensors.items():
            for part in np.array_split(data, chunks.get(name, 1)):
                w.write(part)
            w.end_tensor()
        w.close()
    return path


def _small_file(path, alignment=32):
    tensors = {
        "token_embd.weight": (F16, (8, 32), RNG.standard_normal((8, 32)).astype(np.float16)),
        "output_norm.weight": (F32, (3, 5), RNG.standard_normal((3, 5)).astype(np.float32)),
        "blk.0.attn_norm.weight": (F32, (7,), np.arange(7, dtype=np.float32)),
    }
    return _write(path, KVS, tensors, alignment, chunks={"output_norm.weight": 3}), tensors


# (1) our writer -> gguf-py's reader


@pytest.mark.parametrize("alignment", [32, 64])
def test_our_writer_read_by_gguf_py(tmp_path, alignment):
    path, tensors = _small_file(tmp_path / "a.gguf", alignment)
    r = gguf.GGUFReader(path)

    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert keys == [kv.key for kv in KVS] + (["general.alignment"] if alignment != 32 else [])
    for kv in KVS:
        field = r.fields[kv.key]
        assert field.types[0] == kv.vtype, kv.key
        if kv.vtype == V.ARRAY:
            assert field.types[-1] == kv.subtype, kv.key
        assert field.contents() == _expected(kv), kv.key
    assert r.alignment == alignment

    assert [t.name for t in r.tensors] == list(tensors)
    for t, (ggml_type, shape, data) in zip(r.tensors, tensors.values()):
        assert t.tensor_type == ggml_type
        assert tuple(t.shape.tolist()) == shape[::-1]  # gguf-py reports ne0 first
        assert t.data_offset % alignment == 0
        np.testing.assert_array_equal(t.data, data)

    ours = read_gguf(path)  # and our reader agrees with gguf-py on every offset
    assert [t.offset for t in ours.tensors] == [t.data_offset for t in r.tensors]
    assert ours.data_offset == r.data_offset and ours.alignment == alignment


# (2) gguf-py's writer -> our reader


def test_gguf_py_writer_read_by_us(tmp_path):
    path = tmp_path / "b.gguf"
    a = RNG.standard_normal((4, 64)).astype(np.float32)
    b = RNG.standard_normal((3, 32)).astype(np.float16)
    c = np.arange(5, dtype=np.float32)
    w = gguf.GGUFWriter(path, "bitnet")
    w.add_block_count(2)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_add_bos_token(True)
    w.add_string("general.name", "naïve ✓")
    w.add_token_list(["<unk>", "a", "ü"])
    w.add_token_types([2, 1, 1])
    w.add_token_scores([0.0, -1.0, 0.5])
    for name, arr in [("x.weight", a), ("y.weight", b), ("z.weight", c)]:
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()

    gf = read_gguf(path)
    assert gf.version == 3 and gf.alignment == 32
    assert next(iter(gf.kvs)) == "general.architecture"  # gguf-py's constructor adds it first
    assert gf.kvs["general.architecture"] == "bitnet"
    assert gf.kvs["bitnet.block_count"] == 2 and gf.kv_types["bitnet.block_count"] == V.UINT32
    assert gf.kvs["bitnet.attention.layer_norm_rms_epsilon"] == float(np.float32(1e-6))
    assert gf.kvs["tokenizer.ggml.add_bos_token"] is True
    assert gf.kvs["general.name"] == "naïve ✓"
    assert gf.kvs["tokenizer.ggml.tokens"] == ["<unk>", "a", "ü"]
    assert gf.kvs["tokenizer.ggml.token_type"].dtype == np.int32  # add_array infers INT32
    assert gf.kvs["tokenizer.ggml.token_type"].tolist() == [2, 1, 1]
    assert gf.kvs["tokenizer.ggml.scores"].tolist() == [0.0, -1.0, 0.5]
    assert gf.kv_types["tokenizer.ggml.scores"] == V.ARRAY

    peer = gguf.GGUFReader(path)
    assert [t.name for t in gf.tensors] == ["x.weight", "y.weight", "z.weight"]
    for t, arr, p in zip(gf.tensors, (a, b, c), peer.tensors):
        assert t.shape == arr.shape and t.nbytes == arr.nbytes and t.offset == p.data_offset
        np.testing.assert_array_equal(tensor_array(gf, t), arr)
    assert gf.file_size == path.stat().st_size


# (3) I2_S (type 36), which gguf-py cannot read


def _i2s_bytes(shape):
    n = shape[0] * shape[1]
    body = (np.arange(n // 4) % 251).astype(np.uint8)  # arbitrary packed codes
    return np.concatenate([body, np.frombuffer(struct.pack("<f", 0.5) + bytes(28), np.uint8)])


def test_i2s_offsets_and_bytes(tmp_path):
    q = _i2s_bytes((4, 256))
    assert q.size == 4 * 256 // 4 + 32
    f = np.array([[1.0, -2.0, 3.5]], dtype=np.float32)
    path = _write(tmp_path / "i2s.gguf", KVS[:1], {"blk.0.attn_q.weight": (I2_S, (4, 256), q),
                                                  "blk.0.attn_norm.weight": (F32, (1, 3), f)})
    gf = read_gguf(path)
    ti, tf = gf.tensors
    assert (ti.ggml_type, ti.shape, ti.offset, ti.nbytes) == (I2_S, (4, 256), gf.data_offset, 288)
    assert (tf.ggml_type, tf.shape, tf.offset, tf.nbytes) == (F32, (1, 3), gf.data_offset + 288, 12)
    np.testing.assert_array_equal(tensor_bytes(gf, ti), q)
    np.testing.assert_array_equal(tensor_array(gf, tf), f)
    assert not tensor_bytes(gf, ti).flags.writeable
    assert gf.file_size == gf.data_offset + 288 + 32  # the last tensor is padded too
    # Why we own a reader: gguf-py maps every type id through its enum, which has no 36.
    with pytest.raises(ValueError, match="not a valid GGMLQuantizationType"):
        gguf.GGUFReader(path)
    with pytest.raises(InputError, match="only F32, F16 and I8"):
        tensor_array(gf, ti)


def test_i2s_written_by_gguf_py_read_by_us(tmp_path):
    # reference/llama-cpp.md §2.5: gguf-py writes type 36 when given an int8 view of the bytes.
    path = tmp_path / "peer_i2s.gguf"
    q = _i2s_bytes((2, 128))
    w = gguf.GGUFWriter(path, "bitnet")
    w.add_tensor("a.weight", q.view(np.int8), raw_shape=(2, 128), raw_dtype=36)
    w.add_tensor("b.weight", np.ones(3, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    gf = read_gguf(path)
    assert [(t.ggml_type, t.shape, t.nbytes) for t in gf.tensors] == [(36, (2, 128), 96),
                                                                       (F32, (3,), 12)]
    np.testing.assert_array_equal(tensor_bytes(gf, gf.tensors[0]), q)


# (4) byte sizes


@pytest.mark.parametrize("ggml_type, shape, nbytes", [
    # reference/bitnet-cpp.md §1.1 (bitnet.cpp ggml.c L3472-3495), 2B-4T shapes, numpy order:
    (I2_S, (2560, 2560), 1_638_432),  # attn_q
    (I2_S, (640, 2560), 409_632),  # attn_k / attn_v
    (I2_S, (6912, 2560), 4_423_712),  # ffn_up / ffn_gate
    (I2_S, (2560, 6912), 4_423_712),  # ffn_down
    (TL1, (640, 2560), 409_632),  # TL1 shares the I2_S formula
    # reference/bitnet-cpp.md §2.1: 3B ffn_down (M, K) = (3200, 8640), 5,760,000 B payload
    (TL2, (3200, 8640), 5_794_176),
    (TQ2_0, (3, 512), 3 * 2 * 66),  # GGML_QUANT_SIZES: 256 weights -> 66 bytes
    (TQ1_0, (3, 512), 3 * 2 * 54),
    (F32, (3, 5), 60), (F16, (3, 5), 30), (BF16, (7,), 14),
    (I2_S, (0, 256), 0),  # ggml_nbytes is 0 for an empty tensor, tail included
])
def test_tensor_nbytes(ggml_type, shape, nbytes):
    assert tensor_nbytes(ggml_type, shape) == nbytes


def test_tensor_nbytes_errors():
    with pytest.raises(InputError, match="^unknown ggml type 37$"):
        tensor_nbytes(37, (4, 4))
    with pytest.raises(InputError, match="multiple of 256"):
        tensor_nbytes(TQ2_0, (2, 300))


# (5) reader errors, exact text


def test_bad_magic(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(InputError) as e:
        read_gguf(path)
    assert str(e.value) == f"{path}: not a GGUF file (bad magic)"


def test_unsupported_version(tmp_path):
    path, _ = _small_file(tmp_path / "x.gguf")
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 4)
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        read_gguf(path)
    assert str(e.value) == f"{path}: unsupported GGUF version 4 (bitconv reads versions 2 and 3)"


@pytest.mark.parametrize("cut", [6, 30, "in_tokens", "in_tensor_infos"])
def test_truncated_header(tmp_path, cut):
    path, _ = _small_file(tmp_path / "x.gguf")
    data = path.read_bytes()
    if cut == "in_tokens":
        cut = data.index("▁héllo".encode()) + 3
    elif cut == "in_tensor_infos":
        cut = data.index(b"output_norm.weight") + 20
    path.write_bytes(data[:cut])
    with pytest.raises(InputError) as e:
        read_gguf(path)
    assert str(e.value) == f"{path}: truncated GGUF header"


def test_truncated_data(tmp_path):
    path, _ = _small_file(tmp_path / "x.gguf")
    gf = read_gguf(path)
    t = gf.tensors[1]
    path.write_bytes(path.read_bytes()[:t.offset + 10])
    with pytest.raises(InputError) as e:
        read_gguf(path)
    end = t.offset + t.nbytes
    assert str(e.value) == (f"{path}: truncated: tensor 'output_norm.weight' ends at byte {end}, "
                            f"file has {t.offset + 10}")


@pytest.mark.parametrize("offset,message", [
    (520, "tensor 'output_norm.weight' has offset 520, not a multiple of general.alignment 32"),
    (480, ("tensors 'token_embd.weight' and 'output_norm.weight' overlap (data offsets 0 + 512 "
           "bytes > 480)")),
    (544, ("tensors 'output_norm.weight' and 'blk.0.attn_norm.weight' overlap (data offsets "
           "544 + 60 bytes > 576)")),
])
def test_bad_offset(tmp_path, offset, message):
    """Any aligned offset is legal (tests/test_gguf_layouts.py); misaligned or shared bytes are not."""
    path, _ = _small_file(tmp_path / "x.gguf")
    data = bytearray(path.read_bytes())
    # tensor info: name | u32 n_dims=2 | 2 x u64 dims | u32 type | u64 offset
    at = data.index(b"output_norm.weight") + len("output_norm.weight") + 4 + 16 + 4
    assert struct.unpack_from("<Q", data, at)[0] == 512  # F16 (8, 32) = 512 bytes before it
    struct.pack_into("<Q", data, at, offset)
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        read_gguf(path)
    assert str(e.value) == f"{path}: {message}"


def test_big_token_list_reads_fast(tmp_path):
    tokens = [f"tok{i}▁" for i in range(128_256)]
    kvs = [KV("tokenizer.ggml.tokens", V.ARRAY, tokens, V.STRING),
           KV("tokenizer.ggml.token_type", V.ARRAY, np.ones(len(tokens), np.int32), V.INT32)]
    path = _write(tmp_path / "tok.gguf", kvs, {})
    start = time.perf_counter()
    gf = read_gguf(path)
    assert time.perf_counter() - start < 2.0  # ~0.05 s in practice; gguf-py takes seconds
    assert gf.kvs["tokenizer.ggml.tokens"] == tokens
    assert gf.kvs["tokenizer.ggml.token_type"].shape == (len(tokens),)


# (6) writer misuse


def _writer(tmp_path, infos, kvs=()):
    return GGUFWriter(open(tmp_path / "w.gguf", "wb"), list(kvs), infos)


def test_writer_byte_count_is_checked(tmp_path):
    w = _writer(tmp_path, [TensorInfo("a", (4,), F32, 16), TensorInfo("b", (2,), F32, 8)])
    w.write(np.zeros(3, np.float32))
    with pytest.raises(AssertionError, match="'a': got 12 bytes, expected 16"):
        w.end_tensor()
    with pytest.raises(AssertionError, match="'a': got 20 bytes, expected 16"):
        w.write(np.zeros(2, np.float32))
    w.write(b"\0" * 4)
    w.end_tensor()
    with pytest.raises(AssertionError, match="1 of 2 tensors not written, next is 'b'"):
        w.close()


@pytest.mark.parametrize("infos, kvs, message", [
    ([TensorInfo("a", (1,), F32, 4)] * 2, [], "duplicate tensor name 'a'"),
    ([TensorInfo("n" * 64, (1,), F32, 4)], [], (f"tensor name '{'n' * 64}' is 64 bytes; "
                                                 "llama.cpp allows at most 63")),
    ([TensorInfo("a", (4, 256), I2_S, 1024)], [], ("tensor 'a': nbytes 1024 but I2_S (4, 256) "
                                                   "takes 288")),
    ([], [KV("k", V.UINT32, 1), KV("k", V.UINT32, 2)], "duplicate KV key 'k'"),
    ([], [KV("k", V.UINT8, 256)], "KV 'k': 256 does not fit UINT8"),
    ([], [KV("k", V.ARRAY, [2**31], V.INT32)], "KV 'k': value is not a 1-D array of INT32"),
    ([], [KV("general.alignment", V.UINT32, 64)], "KV 'general.alignment' = 64 disagrees"),
])
def test_writer_rejects(tmp_path, infos, kvs, message):
    with pytest.raises(PackError) as e:
        _writer(tmp_path, infos, kvs)
    assert str(e.value).startswith(message)


def test_writer_accepts_63_byte_name(tmp_path):
    w = _writer(tmp_path, [TensorInfo("n" * 63, (1,), F32, 4)])
    w.write(np.ones(1, np.float32))
    w.end_tensor()
    w.close()
    assert read_gguf(tmp_path / "w.gguf").tensors[0].name == "n" * 63
