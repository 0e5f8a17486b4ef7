"""HF export: golden bytes (formats/hf.md §7), transformers' own packer as a peer, properties,
the exported directory of every fixture family, atomic output and the CLI.

transformers running the exports (logits) is tests/test_transformers_xcheck.py.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.errors import InputError, OutputError, PackError
from bitconv.formats import FORMAT_NAMES, HF, hf
from bitconv.formats.registry import CODECS
from bitconv.model.checkpoint import load_checkpoint
from bitconv.runtime.weights import load_checkpoint_weights
from bitconv.stages import hf_export
from bitconv.stages.pack import pack
from bitconv.types import TernaryTensor
from tests.support.cli import cli

FAMILIES = ["bitnet_b1_58-large", "bitnet-b1.58-2B-4T", "bitnet-b1.58-2B-4T-bf16",
            "Llama3-8B-1.58-100B-tokens"]

# --- 1. golden vectors, copied from formats/hf.md §7 (derived by hand) ---

GOLDEN = {
    # (codes (out, in), packed rows as hex, one string per byte row)
    "a_one_column": ([[1], [0], [-1], [1]], ["86"]),
    "b_transformers_docstring": ([[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1],
                                  [1, -1]], ["a118", "900a"]),
    "c_all_zero": ([[0, 0]] * 4, ["5555"]),
    "d_quarters_not_neighbours": ([[-1], [0], [1], [0], [1], [1], [-1], [0]], ["28", "65"]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_pack_unpack(name):
    rows, hexrows = GOLDEN[name]
    codes = np.array(rows, np.int8)
    expected = np.array([list(bytes.fromhex(h)) for h in hexrows], np.uint8)
    np.testing.assert_array_equal(hf.pack(codes), expected)
    got = hf.unpack(expected)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, codes)
    np.testing.assert_array_equal(hf.unpack_rows(expected, 0, len(codes)), codes)  # streamed


def test_golden_weight_scales():
    # hf.md §7e: autobitlinear stores the multiplier; bitlinear its exact float32 inverse
    assert hf.weight_scale(0.5, "multiply").tobytes() == bytes.fromhex("0000003f")
    s = hf.weight_scale(np.float32(0.025), "divide")
    assert s.tobytes() == bytes.fromhex("00002042")  # 40.0
    assert hf.multiplier(s, "divide") == np.float32(0.025)
    with pytest.raises(PackError) as e:
        hf.weight_scale(np.float32(0.003), "divide")
    assert str(e.value) == ("hf multiplier 0.003000000026077032 has no float32 inverse whose "
                            "reciprocal is exactly it; write it as autobitlinear (weight_scale "
                            "multiplies)")


def test_hf_is_a_target_not_a_gguf_codec():
    assert HF == "hf" and HF in FORMAT_NAMES and HF not in CODECS


# --- 2. transformers' pack_weights / unpack_weights as a peer (hf.md §7, provenance) ---

def test_matches_transformers_pack_and_unpack():
    torch = pytest.importorskip("torch")
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    torch._dynamo.config.disable = True  # unpack_weights is @torch.compile'd: eager is enough
    rng = np.random.default_rng(5)
    cases = [np.array(rows, np.int8) for rows, _ in GOLDEN.values()]
    cases += [rng.integers(-1, 2, (4 * int(rng.integers(1, 9)), int(rng.integers(1, 9))),
                           dtype=np.int8) for _ in range(20)]
    for codes in cases:
        theirs = bitnet.pack_weights(torch.from_numpy(codes.astype(np.int64))).numpy()
        np.testing.assert_array_equal(hf.pack(codes), theirs)
        back = bitnet.unpack_weights(torch.from_numpy(theirs), dtype=torch.float32).numpy()
        np.testing.assert_array_equal(hf.unpack(theirs), back.astype(np.int8))


# --- 3. properties ---

shapes = st.tuples(st.integers(1, 8), st.integers(1, 9), st.integers(0, 2**32 - 1))


def _codes(quarter: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (4 * quarter, cols), dtype=np.int8)


@settings(max_examples=60, deadline=None)
@given(shapes, st.data())
def test_chunks_in_any_order_pack_to_the_whole(shape, data):
    codes = _codes(*shape)
    whole = hf.pack(codes)
    assert whole.shape == hf.packed_shape(codes.shape) and whole.dtype == np.uint8
    np.testing.assert_array_equal(hf.unpack(whole), codes)
    rows = codes.shape[0]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, rows - 1), max_size=5)))) if rows > 1 else []
    bounds = list(zip([0, *cuts], [*cuts, rows]))
    order = data.draw(st.permutations(bounds))
    packed = np.zeros_like(whole)
    for a, b in order:
        hf.pack_chunk_into(packed, a, codes[a:b])
    np.testing.assert_array_equal(packed, whole)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=2.0**-30, max_value=2.0**30, width=32))
def test_weight_scale_is_exact_or_refused(m):
    m = np.float32(m)
    assert hf.multiplier(hf.weight_scale(m, "multiply"), "multiply") == m
    try:
        s = hf.weight_scale(m, "divide")
    except PackError:
        return
    assert np.float32(1) / s == m


@settings(max_examples=200, deadline=None)
@given(st.integers(0x41A0, 0x4348))  # bf16 bit patterns 20.0 .. 200.0: bitlinear checkpoints
def test_a_bitlinear_checkpoint_multiplier_always_has_an_inverse(bits):
    ws = np.array([bits << 16], np.uint32).view(np.float32)[0]
    m = np.float32(1) / ws  # what ternary.multiplier_from_scale reads
    assert np.float32(1) / hf.weight_scale(m, "divide") == m


def test_streamed_round_trip():
    codes = _codes(3, 5, 1)
    packed = np.zeros(hf.packed_shape(codes.shape), np.uint8)
    for start, stop in ((5, 12), (0, 5)):  # chunks in any order
        hf.pack_chunk_into(packed, start, codes[start:stop])
    np.testing.assert_array_equal(packed, hf.pack(codes))
    np.testing.assert_array_equal(hf.unpack_rows(packed, 2, 9), codes[2:9])
    assert hf.scale_name("m.q_proj.weight") == "m.q_proj.weight_scale"
    assert hf.multiplier(hf.weight_scale(np.float32(0.75), "multiply"), "multiply") \
        == np.float32(0.75)


# --- 4. errors (exact text) ---

@pytest.mark.parametrize("shape, msg", [((6, 4), "hf needs out_features % 4 == 0, got 6"),
                                        ((0, 4), "hf needs out_features % 4 == 0, got 0"),
                                        ((4,), "hf packs 2-D weights, got shape (4,)")])
def test_check_shape(shape, msg):
    with pytest.raises(PackError) as e:
        hf.check_shape(shape)
    assert str(e.value) == msg


def test_pack_rejects_non_ternary():
    codes = np.zeros((4, 3), np.int8)
    codes[2, 1] = 2
    with pytest.raises(PackError) as e:
        hf.pack(codes)
    assert str(e.value) == "hf codes must be -1, 0 or +1, got 2 at element 7"


def test_unpack_rejects_code_3():
    packed = np.array([[0x55, 0x55], [0x55, 0x75]], np.uint8)  # bits 5-4 of byte (1, 1): row 5
    with pytest.raises(InputError) as e:
        hf.unpack(packed)
    assert str(e.value) == ("hf data: packed byte holds code 3 (not a ternary value) at row 1 "
                            "(bits 4-5), column 1")  # row 5 of the weight


# --- 5. the exported directory of every fixture family ---

@pytest.fixture(scope="module")
def exports(fixtures_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {n: hf_export.export(fixtures_root / n, out=root / n).path for n in FAMILIES}


def _header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


@pytest.mark.parametrize("name", FAMILIES)
def test_export_reads_back_to_the_same_codes_and_multipliers(name, fixtures_root, exports):
    src, out = load_checkpoint_weights(fixtures_root / name), load_checkpoint_weights(exports[name])
    assert set(src.tensors) == set(out.tensors)
    for k, a in src.tensors.items():
        b = out.tensors[k]
        if isinstance(a, TernaryTensor):
            np.testing.assert_array_equal(a.codes, b.codes, err_msg=k)
            assert a.multiplier == b.multiplier, k
        else:
            np.testing.assert_array_equal(a, b, err_msg=k)


@pytest.mark.parametrize("name", FAMILIES)
def test_export_reads_back_as_the_same_graph(name, fixtures_root, exports):
    # every GGUF key but the name (a directory's) is the same: arch, hparams, tokenizer
    src, out = load_checkpoint_weights(fixtures_root / name), load_checkpoint_weights(exports[name])
    assert list(src.kvs) == list(out.kvs)
    for key in src.kvs:
        if key != "general.name":
            assert np.array_equal(src.kvs[key], out.kvs[key]), key


def test_1bitllm_export_runs_the_1bitllm_graph(fixtures_root, exports):
    # detected as the SiLU sub-norm family: the runtime computes the source's logits exactly
    from bitconv.runtime.model import Model
    from bitconv.stages.verify import fixed_tokens

    src = load_checkpoint_weights(fixtures_root / "bitnet_b1_58-large")
    out = load_checkpoint_weights(exports["bitnet_b1_58-large"])
    assert load_checkpoint(exports["bitnet_b1_58-large"]).config["model_type"] == "bitnet"
    assert out.kvs["general.architecture"] == "bitnet"
    ids = fixed_tokens(8, 512)
    np.testing.assert_array_equal(Model(src, codes="stream").forward(ids),
                                  Model(out, codes="stream").forward(ids))


def test_2b4t_export_is_the_packed_repo_byte_for_byte(fixtures_root, exports):
    # the packed fixture imitates microsoft/bitnet-b1.58-2B-4T key for key and byte for byte
    src, out = fixtures_root / "bitnet-b1.58-2B-4T", exports["bitnet-b1.58-2B-4T"]
    for f in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (src / f).read_bytes(), f


@pytest.mark.parametrize("name, arch, act, qc, scale_dtype", [
    ("bitnet_b1_58-large", "BitNetForCausalLM", "silu", "autobitlinear", "F32"),
    ("bitnet-b1.58-2B-4T", "BitNetForCausalLM", "relu2", "autobitlinear", "BF16"),
    ("bitnet-b1.58-2B-4T-bf16", "BitNetForCausalLM", "relu2", "autobitlinear", "F32"),
    ("Llama3-8B-1.58-100B-tokens", "LlamaForCausalLM", "silu", "bitlinear", "BF16"),
])
def test_export_config_and_dtypes(name, arch, act, qc, scale_dtype, fixtures_root, exports):
    out = exports[name]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [arch] and config["hidden_act"] == act
    assert config["quantization_config"]["quant_method"] == "bitnet"
    assert config["quantization_config"]["linear_class"] == qc
    assert config["quantization_config"]["quantization_mode"] == "offline"
    assert "auto_map" not in config
    header = _header(out / "model.safetensors")
    src = load_checkpoint(fixtures_root / name)
    for tname, info in header.items():
        if tname == "__metadata__":
            assert info == {"format": "pt"}
        elif tname.endswith(".weight_scale"):
            assert info["dtype"] == scale_dtype and info["shape"] == [1], tname
        elif info["dtype"] == "U8":
            assert tname.endswith("_proj.weight")
        elif "sub_norm" not in tname:  # dense tensors keep the source's name and dtype
            assert src.ref(tname).dtype == info["dtype"], tname
    names = set(header) - {"__metadata__"}
    assert all(n in src.tensors for n in names if n.endswith("_proj.weight"))  # HF names kept
    assert not any("rotary_emb" in n or "inner_attn_ln" in n for n in names)
    assert list(header) == ["__metadata__", *sorted(names)]


def test_1bitllm_export_is_transformers_bitnet(exports):
    config = json.loads((exports["bitnet_b1_58-large"] / "config.json").read_text())
    assert config["model_type"] == "bitnet" and config["tie_word_embeddings"] is True
    assert config["num_key_value_heads"] == 4 and config["rope_theta"] == 10000.0
    assert not {"input_bits", "weight_bits"} & set(config)
    names = _header(exports["bitnet_b1_58-large"] / "model.safetensors")
    assert "model.layers.0.self_attn.attn_sub_norm.weight" in names
    assert "model.layers.0.mlp.ffn_sub_norm.weight" in names


def test_export_is_deterministic(fixtures_root, exports, tmp_path):
    name = "Llama3-8B-1.58-100B-tokens"
    again = hf_export.export(fixtures_root / name, out=tmp_path / "again").path
    files = sorted(p.name for p in exports[name].iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for f in files:
        assert (again / f).read_bytes() == (exports[name] / f).read_bytes(), f


def test_other_convention_on_request(fixtures_root, tmp_path):
    # bitlinear Llama written as autobitlinear: float32 multipliers, same model
    name = "Llama3-8B-1.58-100B-tokens"
    out = hf_export.export(fixtures_root / name, out=tmp_path / "a", target_rule="multiply")
    a, b = load_checkpoint_weights(fixtures_root / name), load_checkpoint_weights(out.path)
    for k, t in a.tensors.items():
        if isinstance(t, TernaryTensor):
            assert b.tensors[k].multiplier == t.multiplier
    # 2B4T's beta 1.75 has no float32 x with 1/x == 1.75 exactly: refused, nothing written
    with pytest.raises(PackError) as e:
        hf_export.export(fixtures_root / "bitnet-b1.58-2B-4T", out=tmp_path / "b",
                         target_rule="divide")
    assert str(e.value) == ("model.layers.0.mlp.down_proj.weight: hf multiplier 1.75 has no "
                            "float32 inverse whose reciprocal is exactly it; write it as "
                            "autobitlinear (weight_scale multiplies)")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.incomplete").exists()


# --- 6. atomic output, refusals, pack() and the CLI ---

def test_existing_output_refused_then_replaced_with_force(fixtures_root, tmp_path):
    src, out = fixtures_root / "bitnet-b1.58-2B-4T", tmp_path / "out"
    hf_export.export(src, out=out)
    with pytest.raises(OutputError) as e:
        hf_export.export(src, out=out)
    assert str(e.value) == f"{out}: already exists; pass --force to overwrite"
    (out / "stale.txt").write_text("x")
    hf_export.export(src, out=out, force=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("make, msg", [
    (lambda p: p.mkdir(), "{out}: not a checkpoint directory; refusing to replace it"),
    (lambda p: p.write_text("x"), "{out}: not a directory; refusing to replace it"),
])
def test_force_only_replaces_a_checkpoint_directory(make, msg, fixtures_root, tmp_path):
    out = tmp_path / "out"
    make(out)
    with pytest.raises(OutputError) as e:
        hf_export.export(fixtures_root / "bitnet-b1.58-2B-4T", out=out, force=True)
    assert str(e.value) == msg.format(out=out)


def test_source_is_never_the_output(fixture_copy):
    src = fixture_copy("bitnet-b1.58-2B-4T")
    with pytest.raises(OutputError) as e:
        hf_export.export(src, out=src, force=True)
    assert str(e.value) == f"{src}: is the source checkpoint; choose another output directory"


def test_failure_leaves_nothing(fixtures_root, tmp_path, monkeypatch):
    def boom(*a):
        raise MemoryError("simulated")
    monkeypatch.setattr(hf, "pack_chunk_into", boom)
    with pytest.raises(MemoryError):
        hf_export.export(fixtures_root / "bitnet-b1.58-2B-4T", out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_pack_routes_hf_to_a_directory(fixtures_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = pack(fixtures_root / "bitnet-b1.58-2B-4T", format="hf")
    assert str(res.path) == "bitnet-b1.58-2B-4T-hf" and (tmp_path / res.path).is_dir()
    assert (res.format, res.family) == ("hf", "bitnet-b1.58")


def test_cli_pack_hf_prints_only_the_directory(fixtures_root, tmp_path):
    out = tmp_path / "llama-hf"
    r = cli("pack", fixtures_root / "Llama3-8B-1.58-100B-tokens", "--format", "hf", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{out}\n"
    assert (out / "config.json").is_file()


def test_remote_bitnet_tokenizer_becomes_llama_tokenizer(fixture_copy, tmp_path):
    # the real 1bitLLM tokenizer_config.json names its remote BitnetTokenizer (hf.md §5)
    src = fixture_copy("bitnet_b1_58-large")
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc.update(tokenizer_class="BitnetTokenizer",
              auto_map={"AutoTokenizer": ["tokenization_bitnet.BitnetTokenizer", None]})
    (src / "tokenizer_config.json").write_text(json.dumps(tc))
    out = hf_export.export(src, out=tmp_path / "out").path
    got = json.loads((out / "tokenizer_config.json").read_text())
    assert got["tokenizer_class"] == "LlamaTokenizer" and "auto_map" not in got
    assert (out / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()
