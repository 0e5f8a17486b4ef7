"""The codec contract (bitconv/formats/base.py), checked over EVERY registered codec.

Expected values come from the definitions, not from the codec under test: the codes that went
in, the float32 multiplier (or, for a lossy `-fp16` layout, float32(fp16(m)), llama.cpp's d),
the parts' declared sizes, the element index of the code planted out of range.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from bitconv.containers.gguf_writer import tensor_nbytes
from bitconv.errors import InputError, PackError
from bitconv.formats import FORMAT_NAMES, HF, tiling
from bitconv.formats.base import Codec
from bitconv.formats.registry import CODECS, SIZES, codec_for, get_codec

NAMES = sorted(CODECS)
# a small set of weight shapes: every codec must hold some of them, and refuse the others
SHAPES = [(4, 64), (3, 128), (8, 256), (32, 256), (64, 384), (32, 512), (256, 256), (128, 768),
          (64, 1024)]
BAD_SHAPES = [(64,), (4, 4, 64), (4, 1), (4, 100)]  # no layout holds these
M = np.float32(0.75)  # exact in fp16 too


def admissible(codec: Codec) -> list[tuple[int, int]]:
    out = []
    for s in SHAPES:
        try:
            codec.check_shape(s)
        except PackError as e:
            assert "\n" not in str(e) and str(e).startswith(codec.spec.name), str(e)
        else:
            out.append(s)
    assert out, f"{codec.spec.name} holds none of {SHAPES}"
    return out


def random_codes(codec: Codec, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array(codec.spec.codes, np.int8), size=shape)


def chunks_of(codes: np.ndarray, codec: Codec) -> list[np.ndarray]:
    """Row chunks of uneven sizes, each a multiple of spec.row_multiple rows."""
    step = codec.spec.row_multiple
    cuts = sorted({0, *range(step, codes.shape[0], 3 * step), codes.shape[0]})
    return [codes[a:b] for a, b in itertools.pairwise(cuts)]


def encode(codec: Codec, m: np.float32, chunks: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a) for a in codec.encode(m, iter(chunks))]


def decode(codec: Codec, datas: list[np.ndarray], shape: tuple[int, int]):
    t = tiling.choose(codec.spec.name, shape) if codec.tiled else None  # what pack recorded
    return codec.decode(datas, shape, t)


def split(codec: Codec, name: str, shape: tuple[int, int], out: list[np.ndarray]):
    """The yielded arrays as the bytes of each part; asserts no array straddles two parts."""
    parts = codec.parts(name, shape)
    ends = np.cumsum([p.nbytes for p in parts])
    datas, buf, done = [], [], 0
    for a in out:
        assert a.dtype == np.uint8 and a.ndim >= 1
        part = int(np.searchsorted(ends, done, side="right"))
        assert done + a.nbytes <= ends[part], f"an array straddles parts {part} and {part + 1}"
        buf.append(a.reshape(-1))
        done += a.nbytes
        if done == ends[len(datas)]:
            datas.append(np.concatenate(buf))
            buf = []
    assert done == ends[-1], f"encode wrote {done} bytes, parts() declare {int(ends[-1])}"
    return datas


# --- the registry ---

def test_cli_takes_its_format_choices_from_the_names_without_loading_numpy():
    code = ("import sys, click, bitconv.cli as c, bitconv.formats as f; "
            "opt = next(p for p in c.pack.params if p.name == 'fmt'); "
            "assert tuple(opt.type.choices) == f.FORMAT_NAMES, opt.type.choices; "
            "assert 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_registry_names_are_the_cli_choices_but_hf():
    assert list(CODECS) == [n for n in FORMAT_NAMES if n != HF]
    assert all(c.spec.name == n and get_codec(n) is c for n, c in CODECS.items())
    with pytest.raises(PackError, match="^unknown format 'nope'; choose one of: "):
        get_codec("nope")


@pytest.mark.parametrize("name", NAMES)
def test_codec_is_typed_and_sizes_its_ggml_type(name):
    codec = CODECS[name]
    assert isinstance(codec, Codec)
    size = SIZES[codec.spec.ggml_type]
    for shape in admissible(codec):
        # variants of a type never differ in size; the container asks the codecs
        assert codec.nbytes(shape) == size.nbytes(shape) == tensor_nbytes(codec.spec.ggml_type,
                                                                           shape)
        weight = codec.parts("blk.0.attn_q.weight", shape)[0]
        assert (weight.name, weight.ggml_type, weight.shape) == (
            "blk.0.attn_q.weight", codec.spec.ggml_type, shape)


# --- round trip, parts, streaming ---

@pytest.mark.parametrize("name", NAMES)
def test_round_trip_every_admissible_shape(name):
    codec = CODECS[name]
    want_m = M if codec.spec.lossless else np.float32(np.float16(M))
    for i, shape in enumerate(admissible(codec)):
        codes = random_codes(codec, shape, i)
        datas = split(codec, "w", shape, encode(codec, M, chunks_of(codes, codec)))
        got, m = decode(codec, datas, shape)
        assert got.dtype == np.int8 and got.shape == shape
        np.testing.assert_array_equal(got, codes)
        assert np.float32(m).view(np.uint32) == want_m.view(np.uint32)


@pytest.mark.parametrize("name", [n for n in NAMES if CODECS[n].spec.lossless])
def test_lossless_codecs_keep_any_float32_multiplier(name):
    codec = CODECS[name]
    shape = admissible(codec)[0]
    codes = random_codes(codec, shape, 7)
    for m in np.random.default_rng(3).random(5, np.float32) * np.float32(50):
        _, back = decode(codec, split(codec, "w", shape, encode(codec, m, [codes])), shape)
        assert np.float32(back).view(np.uint32) == np.float32(m).view(np.uint32)


@pytest.mark.parametrize("name", [n for n in NAMES if CODECS[n].spec.row_local])
def test_row_local_promise(name):
    """encode(m, chunks) == each chunk's blocks, encoded alone, then what encode(m, []) gives."""
    codec = CODECS[name]
    for i, shape in enumerate(admissible(codec)):
        codes = random_codes(codec, shape, i)
        whole = b"".join(a.tobytes() for a in codec.encode(M, iter(chunks_of(codes, codec))))
        trailer = b"".join(a.tobytes() for a in codec.encode(M, iter(())))
        alone = b"".join(b"".join(a.tobytes() for a in codec.encode(M, iter([c])))
                         .removesuffix(trailer) for c in chunks_of(codes, codec))
        assert whole == alone + trailer


@pytest.mark.parametrize("name", [n for n in NAMES if CODECS[n].tiled])
def test_tiled_codecs_refuse_to_decode_without_the_tiling(name):
    codec = CODECS[name]
    shape = admissible(codec)[0]
    datas = split(codec, "w", shape, encode(codec, M, [random_codes(codec, shape)]))
    with pytest.raises(InputError, match="no tiling"):
        codec.decode(datas, shape)


# --- refusals: one line each ---

@pytest.mark.parametrize("name", NAMES)
def test_check_shape_refusals_are_packerror_one_liners(name):
    codec = CODECS[name]
    for shape in BAD_SHAPES:
        with pytest.raises(PackError) as e:
            codec.check_shape(shape)
        assert "\n" not in str(e.value) and str(e.value).startswith(f"{name} "), str(e.value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [2, -2, 5])
def test_non_ternary_codes_refused_naming_the_element(name, value):
    codec = CODECS[name]
    shape = admissible(codec)[-1]
    codes = random_codes(codec, shape, 1)
    element = int(np.random.default_rng(value + 10).integers(codes.size))
    codes.reshape(-1)[element] = value
    with pytest.raises(PackError) as e:
        encode(codec, M, [codes])
    msg = str(e.value)
    assert msg == f"{name} codes must be -1, 0 or +1, got {value} at element {element}", msg


@pytest.mark.parametrize("name", [n for n in NAMES if 0 not in CODECS[n].spec.codes])
def test_binary_codecs_refuse_zero_naming_the_element(name):
    codec = CODECS[name]
    shape = admissible(codec)[-1]
    codes = random_codes(codec, shape, 2)
    element = codes.size // 3 + 5
    codes.reshape(-1)[element] = 0
    with pytest.raises(PackError) as e:
        encode(codec, M, [codes])
    msg = str(e.value)
    assert "\n" not in msg and f"got 0 at element {element} " in msg, msg


@pytest.mark.parametrize("name", NAMES)
def test_non_integer_codes_refused(name):
    codec = CODECS[name]
    shape = admissible(codec)[0]
    with pytest.raises(PackError, match=f"^{name} codes must be an integer array, got dtype"):
        encode(codec, M, [random_codes(codec, shape).astype(np.float32)])


@pytest.mark.parametrize("name", NAMES)
def test_decode_refuses_wrong_lengths_in_one_line(name):
    codec = CODECS[name]
    shape = admissible(codec)[0]
    datas = split(codec, "w", shape, encode(codec, M, [random_codes(codec, shape)]))
    datas[0] = datas[0][:-1]
    with pytest.raises(InputError) as e:
        decode(codec, datas, shape)
    assert "\n" not in str(e.value) and str(e.value).startswith(name)


# --- sidecar, metadata, identification ---

@pytest.mark.parametrize("name", NAMES)
def test_sidecar_and_kvs(name):
    codec = CODECS[name]
    weights = [(f"blk.{i}.attn_q.weight", s) for i, s in enumerate(admissible(codec))]
    side = codec.sidecar(weights)
    assert side is None or (isinstance(side[0], str) and side[0].startswith(".")
                            and isinstance(side[1], bytes) and side[1])
    assert codec.sidecar([]) is None
    keys = [kv.key for kv in codec.kvs("llama", weights)]
    assert ("llama.tensor_data_layout" in keys) == (codec.layout is not None)


@pytest.mark.parametrize("name", NAMES)
def test_codec_for_finds_the_codec_from_its_parts_and_layout_key(name):
    codec = CODECS[name]
    shape = admissible(codec)[0]
    parts = codec.parts("blk.0.attn_q.weight", shape)
    kvs = {"general.architecture": "llama"}
    kvs |= {kv.key: kv.value for kv in codec.kvs("llama") if kv.key.endswith("_layout")}
    assert codec_for(codec.spec.ggml_type, parts[0].name, shape, {p.name for p in parts},
                     kvs) is codec
