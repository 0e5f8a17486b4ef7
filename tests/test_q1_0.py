"""Q1_0 codecs (q1_0 lossless, q1_0-fp16 lossy) and binary weights: golden bytes
(formats/q1_0.md §8) checked against a per-element transcription of llama.cpp's
quantize_row_q1_0_ref / dequantize_row_q1_0, properties, exact errors, BitNet's binarization, and
binary fixtures (the 1bitLLM and Llama3 layouts holding 1-bit weights) through pack, verify,
inspect, repack and the runtime."""
from __future__ import annotations

import json
import re
import shutil
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.containers.safetensors import DTYPES, read_header, write_safetensors
from bitconv.errors import InputError, PackError
from bitconv.formats import q1_0
from bitconv.formats.registry import CODECS, codec_for, get_codec
from bitconv.model.reference import binarize
from bitconv.runtime.model import Model
from bitconv.runtime.weights import load_checkpoint_weights, load_gguf
from bitconv.stages.pack import pack
from bitconv.stages.repack import repack
from bitconv.types import TernaryTensor
from tests.support.cli import cli

LOSSLESS, LOSSY = q1_0.CODEC, q1_0.FP16
PROJ = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")


def encode(codec, codes, m, rows_per_chunk=None):
    step = rows_per_chunk or codes.shape[0]
    chunks = [codes[a:a + step] for a in range(0, codes.shape[0], step)]
    return [np.asarray(x) for x in codec.encode(m, chunks)]


def hexs(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


# --- a second implementation: llama.cpp's C, line by line (ggml-quants.c L40-72, L419-437) ---

def ref_quantize(x: np.ndarray) -> bytes:
    x = np.asarray(x, np.float32).reshape(-1)
    out = bytearray()
    for i in range(x.size // 128):
        blk = x[128 * i: 128 * i + 128]
        sum_abs = np.float32(0)
        for v in blk:
            sum_abs = np.float32(sum_abs + np.float32(abs(v)))
        d = np.float32(sum_abs / np.float32(128))
        qs = [0] * 16
        for j in range(128):
            if blk[j] >= 0:
                qs[j // 8] |= 1 << (j % 8)
        out += np.float16(d).tobytes() + bytes(qs)
    return bytes(out)


def ref_dequantize(data: bytes, shape) -> np.ndarray:
    y = []
    for i in range(len(data) // 18):
        d = np.float32(np.frombuffer(data[18 * i: 18 * i + 2], "<f2")[0])
        for j in range(128):
            y.append(d if (data[18 * i + 2 + j // 8] >> (j % 8)) & 1 else -d)
    return np.array(y, np.float32).reshape(shape)


# --- 1. golden vectors, copied from formats/q1_0.md §8 ---

def _golden_a():
    return np.ones((1, 128), np.int8)


def _golden_b():
    return np.where(np.arange(128) % 3 == 0, 1, -1).astype(np.int8).reshape(1, 128)


def _golden_c():
    t = -np.ones((2, 256), np.int8)
    t[0, 0] = t[0, 127] = t[0, 200] = t[1, 255] = 1
    return t


BODIES_C = ["01" + "00" * 14 + "80", "00" * 9 + "01" + "00" * 6, "00" * 16, "00" * 15 + "80"]
GOLDEN = {  # name: (codes, multiplier, block bodies, fp16 d of the lossy file, F32 scale)
    "a_all_plus": (_golden_a, 1.0, ["ff" * 16], "003c", "0000803f"),
    "b_j_mod_3": (_golden_b, 0.5, ["499224" * 5 + "49"], "0038", "0000003f"),
    "c_two_rows": (_golden_c, 0.0123, BODIES_C, "4c22", "f085493c"),
}


def golden_bytes(name, d):
    return hexs(*(d + body for body in GOLDEN[name][2]))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
    make, m, _, d, scale = GOLDEN[name]
    got = encode(LOSSLESS, make(), m)
    assert b"".join(x.tobytes() for x in got[:-1]) == golden_bytes(name, "003c")
    assert got[-1].tobytes() == bytes.fromhex(scale)
    codes, mult = LOSSLESS.decode([np.frombuffer(golden_bytes(name, "003c"), np.uint8),
                                   np.frombuffer(hexs(scale), np.uint8)], make().shape)
    np.testing.assert_array_equal(codes, make())
    assert mult == np.float32(m)
    assert b"".join(x.tobytes() for x in encode(LOSSY, make(), m)) == golden_bytes(name, d)
    codes, mult = LOSSY.decode([np.frombuffer(golden_bytes(name, d), np.uint8)], make().shape)
    np.testing.assert_array_equal(codes, make())
    assert mult == np.float32(np.float16(np.float32(m)))
    # llama.cpp's quantizer on codes * fp16(m): d = mean|x| = fp16(m) exactly (128 copies of an
    # 11-bit significand sum exactly in float32), bits x >= 0: the very bytes
    x = make().astype(np.float32) * np.float32(np.float16(np.float32(m)))
    assert ref_quantize(x) == golden_bytes(name, d)
    np.testing.assert_array_equal(ref_dequantize(golden_bytes(name, d), x.shape), x)


def test_spec_registry_and_identification():
    for codec, name, lossless in ((LOSSLESS, "q1_0", True), (LOSSY, "q1_0-fp16", False)):
        s = codec.spec
        assert (s.name, s.ggml_type, s.file_type, s.block_elems, s.block_bytes, s.lossless,
                s.codes, s.d_first) == (name, 41, 40, 128, 18, lossless, (-1, 1), True)
        assert get_codec(name) is codec and CODECS[name] is codec
    name = "blk.0.attn_q.weight"
    assert codec_for(41, name, (256, 256), {name, "blk.0.attn_q.scale"}) is LOSSLESS
    assert codec_for(41, name, (256, 256), {name}) is LOSSY
    # file type 40 is Q1_0 in mainline and I2_S in bitnet.cpp: the tensors decide (type 36 here)
    assert codec_for(36, name, (256, 256), {name}).spec.name == "i2s"
    assert q1_0.CODEC.nbytes((2560, 2560)) == 921_600 and q1_0.CODEC.nbytes((1, 128)) == 18


# --- 2. properties ---

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**32 - 1),
       st.floats(min_value=2.0**-14, max_value=60000.0, width=32))
def test_roundtrips_and_reference(rows, k, seed, m):
    codes = np.where(np.random.default_rng(seed).random((rows, 128 * k)) < 0.5, 1, -1).astype(np.int8)
    datas = encode(LOSSLESS, codes, m, 1)
    got, mult = LOSSLESS.decode([np.concatenate(datas[:-1]), datas[-1]], codes.shape)
    np.testing.assert_array_equal(got, codes)
    assert mult.tobytes() == np.float32(m).tobytes()
    data = np.concatenate(encode(LOSSY, codes, m)).tobytes()
    x = codes.astype(np.float32) * np.float32(np.float16(np.float32(m)))
    assert ref_quantize(x) == data
    np.testing.assert_array_equal(ref_dequantize(data, codes.shape), x)


# --- 3. errors ---

@pytest.mark.parametrize("k", [64, 192, 8640])
def test_check_shape_rejects_k_not_multiple_of_128(k):
    for codec in (LOSSLESS, LOSSY):
        with pytest.raises(PackError) as e:
            codec.check_shape((4, k))
        assert str(e.value) == f"{codec.spec.name} needs in_features % 128 == 0, got {k}"


def test_a_zero_code_is_refused():
    codes = np.ones((2, 128), np.int8)
    codes[1, 5] = 0
    with pytest.raises(PackError) as e:
        list(LOSSY.encode(1.0, [codes]))
    assert str(e.value) == ("q1_0 holds binary weights (-1 or +1); got 0 at element 133 "
                            "(a ternary weight: use --format q2_0)")


def _c(d, patch):
    data = bytearray(golden_bytes("c_two_rows", d))
    for off, val in patch.items():
        data[off] = val
    return np.frombuffer(bytes(data), np.uint8)


def test_d_errors():
    with pytest.raises(InputError) as e:
        LOSSLESS.decode([_c("003c", {54: 0x00, 55: 0x38}), np.zeros(4, np.uint8)], (2, 256))
    assert str(e.value) == ("q1_0 blocks must have d = 1 beside a .scale tensor, "
                            "got d = 0.5 at block 3")
    with pytest.raises(InputError) as e:  # block 2 (all -1) has a say: no block is all zero
        LOSSY.decode([_c("4c22", {36: 0x00, 37: 0x34})], (2, 256))
    assert str(e.value) == ("q1_0-fp16 blocks have different scales: d = 0.012298583984375 at "
                            "block 0, 0.25 at block 2; bitconv reads one scale per tensor")


# --- 4. BitNet's binarization ---

def test_binarize_by_hand():
    codes, beta = binarize(np.array([[0.5, -0.25, 0.25, 0.0]], np.float32))
    assert codes.tolist() == [[1, -1, 1, -1]] and beta == np.float32(0.25)  # alpha = 0.125
    codes, beta = binarize(np.array([[1.0, -1.0, 0.0, 0.0]], np.float32))
    assert codes.tolist() == [[1, -1, -1, -1]] and beta == np.float32(0.5)  # Sign(0) = -1 (eq. 2)


# --- 5. binary fixtures: 1bitLLM layout (latent floats already binary) and Llama3 layout ---

def rewrite_shards(src, dst, transform):
    """Copy checkpoint `src` to `dst`, passing every ternary projection through transform(name,
    array) -> array (same dtype and shape)."""
    shutil.copytree(src, dst)
    for shard in sorted(dst.glob("*.safetensors")):
        refs = read_header(shard)
        order = sorted(refs.values(), key=lambda r: r.start)
        raw = shard.read_bytes()
        arrays = {r.name: np.frombuffer(raw[r.start:r.end], DTYPES[r.dtype]).reshape(r.shape)
                  for r in order}
        write_safetensors(shard, order, lambda r, a=arrays: [
            transform(r.name, a[r.name]) if PROJ.fullmatch(r.name) else a[r.name]])
    return dst


def binary_1bitllm(w_name, w):
    codes, beta = binarize(w)
    return codes.astype(np.float32) * beta


def binary_hf_packed(name, packed):
    """Llama-family uint8 [out/4, in]: four 2-bit fields per byte, code t + 1; binary weights
    use fields 0 and 2 only (hf.md §1.3)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    bits = rng.integers(0, 2, size=packed.shape + (4,), dtype=np.uint8)
    return ((bits << 1) << np.array([0, 2, 4, 6], np.uint8)).sum(-1, dtype=np.uint8)


@pytest.fixture(scope="module")
def binaries(fixtures_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    return {
        "bitnet": rewrite_shards(fixtures_root / "bitnet_b1_58-large", root / "b1-large",
                                 binary_1bitllm),
        "llama": rewrite_shards(fixtures_root / "Llama3-8B-1.58-100B-tokens", root / "llama3-b1",
                                binary_hf_packed),
    }


@pytest.fixture(scope="module")
def packed_binary(binaries, tmp_path_factory):
    """packed_binary(family, fmt): the binary checkpoint of `family` packed to `fmt`, once."""
    out = tmp_path_factory.mktemp("q1")

    def get(family: str, fmt: str):
        path = out / f"{family}-{fmt}.gguf"
        if not path.exists():
            pack(binaries[family], format=fmt, out=path)
        return path
    return get


@pytest.mark.parametrize("fmt", ["q1_0", "q1_0-fp16"])
@pytest.mark.parametrize("family", ["bitnet", "llama"])
def test_binary_fixture_packs_and_verifies(family, fmt, binaries, packed_binary):
    path = packed_binary(family, fmt)
    ref = load_checkpoint_weights(binaries[family], format=fmt)
    ours = load_gguf(path)
    ternary = [n for n in ref.order if isinstance(ref.tensors[n], TernaryTensor)]
    assert len(ternary) == 14
    for n in ternary:
        r, o = ref.tensors[n], ours.tensors[n]
        assert set(np.unique(r.codes)) == {-1, 1}                 # binary, not re-quantized
        np.testing.assert_array_equal(o.codes, r.codes)
        assert o.multiplier == r.multiplier
    r = cli("verify", path, "--source", binaries[family], "--no-drift", "--tokens", "4")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0].startswith("ok    container")


def test_binary_multiplier_is_mean_abs_of_latent(fixtures_root, binaries):
    # the 1bitLLM-layout fixture's multiplier is the BitNet beta of its latent source
    src = fixtures_root / "bitnet_b1_58-large" / "model.safetensors"
    ref = read_header(src)["model.layers.0.self_attn.q_proj.weight"]
    w = np.frombuffer(src.read_bytes()[ref.start:ref.end], np.float32).reshape(ref.shape)
    m = load_checkpoint_weights(binaries["bitnet"]).tensors["blk.0.attn_q.weight"].multiplier
    assert m == binarize(w)[1]


def test_latent_floats_are_binarized_as_bitnet_does(fixtures_root, packed, packed_binary):
    # q1_0 holds no 0: pack binarizes latent floats (Sign(W - mean W), mean|W|), which gives
    # the model the already-binary fixture holds; verify's source side does the same
    src = fixtures_root / "bitnet_b1_58-large"
    out = packed("bitnet_b1_58-large", "q1_0")
    got, ref = load_gguf(out), load_gguf(packed_binary("bitnet", "q1_0"))
    st = src / "model.safetensors"
    for n in ("blk.0.ffn_down.weight", "blk.1.attn_q.weight"):
        a, b = got.tensors[n], ref.tensors[n]
        np.testing.assert_array_equal(a.codes, b.codes)
        assert a.multiplier == b.multiplier
    h = read_header(st)["model.layers.1.mlp.down_proj.weight"]
    w = np.frombuffer(st.read_bytes()[h.start:h.end], np.float32).reshape(h.shape)
    codes, beta = binarize(w)
    np.testing.assert_array_equal(got.tensors["blk.1.ffn_down.weight"].codes, codes)
    assert got.tensors["blk.1.ffn_down.weight"].multiplier == beta
    r = cli("verify", out, "--source", src, "--no-drift", "--tokens", "4")
    assert r.exit_code == 0, r.stdout + r.stderr


def test_ternary_model_is_refused_by_q1_0(fixtures_root, tmp_path):
    # HF-packed ternary codes are never re-quantized: their 0s have no Q1_0 bit
    out = tmp_path / "m.gguf"
    r = cli("pack", fixtures_root / "Llama3-8B-1.58-100B-tokens", "--format", "q1_0", "-o", out)
    assert r.exit_code == 1 and r.stdout == ""
    assert re.fullmatch(r"Error: model\.layers\.0\.\S+\.weight: q1_0 holds binary weights "
                        r"\(-1 or \+1\); got 0 at element \d+ \(a ternary weight: use --format "
                        r"q2_0\)\n", r.stderr), r.stderr
    assert not list(tmp_path.iterdir())


def test_inspect_labels(packed_binary):
    a = json.loads(cli("inspect", packed_binary("bitnet", "q1_0"), "--json").stdout)
    b = json.loads(cli("inspect", packed_binary("bitnet", "q1_0-fp16"), "--json").stdout)
    assert a["summary"]["ternary format"] == ("q1_0 (lossless: float32 multipliers in F32 "
                                              "companion tensors)")
    assert b["summary"]["ternary format"].startswith("q1_0-fp16 (lossy")
    assert b["summary"]["max weight error"].startswith("<= 0.000")
    assert {t["name"]: t["type"] for t in a["tensors"]}["blk.0.attn_q.weight"] == "Q1_0"


@pytest.mark.parametrize("other", ["i2s", "tq2_0", "q2_0", "tl2"])
def test_repack_binary_both_ways(other, packed_binary, tmp_path):
    # binary codes are ternary codes too: every lossless format holds them, and back
    there = repack(packed_binary("llama", "q1_0"), format=other, out=tmp_path / "o.gguf")
    ref = packed_binary("llama", other)
    assert there.path.read_bytes() == ref.read_bytes()
    back = repack(there.path, format="q1_0", out=tmp_path / "back.gguf")
    assert back.path.read_bytes() == packed_binary("llama", "q1_0").read_bytes()


def test_repack_ternary_to_q1_0_refused(packed, tmp_path):
    src = packed("bitnet_b1_58-large", "q2_0")
    r = cli("repack", src, "--format", "q1_0", "-o", tmp_path / "o.gguf")
    assert r.exit_code == 1 and "q1_0 holds binary weights" in r.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_model_picks_q8_0_for_q1_0_files(packed_binary):
    assert Model(load_gguf(packed_binary("bitnet", "q1_0")), "llama.cpp").group == 128
    assert Model(load_gguf(packed_binary("bitnet", "q1_0-fp16")), "llama.cpp").group == 128
