"""TL1/TL2 tiling: bitnet.cpp's presets, the rule on real and fixture shapes, errors, kernel_config.ini.

Provenance of the literals below: SETUP_ENV copies the `--BM/--BK/--bm` strings that
microsoft/BitNet@16da220 setup_env.py `gen_code` passes to utils/codegen_tl{1,2}.py, with the
shapes of codegen's ModelShapeDict in that order; PRESET_INI copies
microsoft/BitNet@6cfd883 preset_kernels/<model>/kernel_config_tl{1,2}.ini byte for byte (the files
bitnet.cpp ships, written by codegen's ConfigParser). Neither comes from bitconv.
"""
from __future__ import annotations

import configparser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.errors import PackError
from bitconv.formats import tiling
from bitconv.formats.tiling import Tiling

MODEL_SHAPES = {
    "bitnet_b1_58-large": [(1536, 4096), (1536, 1536), (4096, 1536)],
    "bitnet_b1_58-3B": [(3200, 8640), (3200, 3200), (8640, 3200)],
    "Llama3-8B-1.58-100B-tokens": [(14336, 4096), (4096, 14336), (1024, 4096), (4096, 4096)],
}
SETUP_ENV = {
    "tl1": {"bitnet_b1_58-large": ("256,128,256", "128,64,128", "32,64,32"),
            "Llama3-8B-1.58-100B-tokens": ("256,128,256,128", "128,64,128,64", "32,64,32,64"),
            "bitnet_b1_58-3B": ("160,320,320", "64,128,64", "32,64,32")},
    "tl2": {"bitnet_b1_58-large": ("256,128,256", "96,192,96", "32,32,32"),
            "Llama3-8B-1.58-100B-tokens": ("256,128,256,128", "96,96,96,96", "32,32,32,32"),
            "bitnet_b1_58-3B": ("160,320,320", "96,96,96", "32,32,32")},
}
PRESET_INI = {
    ("tl1", "bitnet_b1_58-large"):
        "[Kernels_0]\nm = 1536\nk = 4096\nbm = 256\nbk = 128\nbmm = 32\n\n"
        "[Kernels_1]\nm = 1536\nk = 1536\nbm = 128\nbk = 64\nbmm = 64\n\n"
        "[Kernels_2]\nm = 4096\nk = 1536\nbm = 256\nbk = 128\nbmm = 32\n\n",
    ("tl1", "bitnet_b1_58-3B"):
        "[Kernels_0]\nm = 3200\nk = 8640\nbm = 160\nbk = 64\nbmm = 32\n\n"
        "[Kernels_1]\nm = 3200\nk = 3200\nbm = 320\nbk = 128\nbmm = 64\n\n"
        "[Kernels_2]\nm = 8640\nk = 3200\nbm = 320\nbk = 64\nbmm = 32\n\n",
    ("tl2", "bitnet_b1_58-3B"):
        "[Kernels_0]\nm = 3200\nk = 8640\nbm = 160\nbk = 96\nbmm = 32\n\n"
        "[Kernels_1]\nm = 3200\nk = 3200\nbm = 320\nbk = 96\nbmm = 32\n\n"
        "[Kernels_2]\nm = 8640\nk = 3200\nbm = 320\nbk = 96\nbmm = 32\n\n",
    ("tl2", "Llama3-8B-1.58-100B-tokens"):
        "[Kernels_0]\nm = 14336\nk = 4096\nbm = 256\nbk = 96\nbmm = 32\n\n"
        "[Kernels_1]\nm = 4096\nk = 14336\nbm = 128\nbk = 96\nbmm = 32\n\n"
        "[Kernels_2]\nm = 1024\nk = 4096\nbm = 256\nbk = 96\nbmm = 32\n\n"
        "[Kernels_3]\nm = 4096\nk = 4096\nbm = 128\nbk = 96\nbmm = 32\n\n",
}


def _params(fmt, shape):
    t = tiling.choose(fmt, shape)
    return t.BM, t.BK, t.bm


# --- 1. bitnet.cpp's presets are reproduced and are valid ---

@pytest.mark.parametrize("fmt", ["tl1", "tl2"])
@pytest.mark.parametrize("model", sorted(MODEL_SHAPES))
def test_presets_equal_setup_env(fmt, model):
    bms, bks, sms = (s.split(",") for s in SETUP_ENV[fmt][model])
    for shape, BM, BK, bm in zip(MODEL_SHAPES[model], bms, bks, sms, strict=True):
        t = tiling.choose(fmt, shape)
        assert (t.BM, t.BK, t.bm) == (int(BM), int(BK), int(bm))
        assert tiling.problem(t) is None


@pytest.mark.parametrize("fmt, model", sorted(PRESET_INI))
def test_kernel_config_body_equals_shipped_ini(fmt, model):
    # shapes given in a scrambled order: a preset model's set is written in codegen's order
    text = tiling.kernel_config(fmt, MODEL_SHAPES[model][::-1]).decode()
    assert text.split("\n[", 1)[1] == PRESET_INI[(fmt, model)][1:]


def test_shipped_ini_that_setup_overrides():
    # preset_kernels' large TL2 ini has bmm = 64 for (4096, 1536), which codegen_tl2 forbids;
    # bitconv follows setup_env (bm 32), the numbers a build actually contains.
    assert tiling.problem(Tiling("tl2", 4096, 1536, 256, 96, 64)) == "bm must be 32, got 64"
    assert _params("tl2", (4096, 1536)) == (256, 96, 32)


# --- 2. the rule on shapes bitnet.cpp ships nothing for ---

B2_4T = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]  # q/o, k/v, gate/up, down


@pytest.mark.parametrize("fmt, expected", [
    # BM: largest multiple of 32 dividing M, <= 256; TL1 BK: gcd(K, 128); TL2 BK: nearest 96
    ("tl1", [(256, 128, 32), (160, 128, 32), (256, 128, 32), (256, 128, 32)]),
    ("tl2", [(256, 96, 32), (160, 96, 32), (256, 96, 32), (256, 96, 32)]),
])
def test_rule_on_2b4t(fmt, expected):
    assert [_params(fmt, s) for s in B2_4T] == expected
    assert [tiling.choose("tl2", s).two_k for s in B2_4T] == [64, 64, 64, 0]


@pytest.mark.parametrize("shape, tl1, tl2", [
    # the tiny fixtures: hidden 256, intermediate 512, 4 heads of 64, 2 (or 4) kv heads
    ((256, 256), (256, 128, 32), (256, 96, 32)),
    ((128, 256), (128, 128, 32), (128, 96, 32)),
    ((512, 256), (256, 128, 32), (256, 96, 32)),
    ((256, 512), (256, 128, 32), (256, 96, 32)),
])
def test_rule_on_fixture_shapes(shape, tl1, tl2):
    assert _params("tl1", shape) == tl1 and _params("tl2", shape) == tl2


def test_rule_on_preset_models_without_presets(monkeypatch):
    # What the rule alone gives for the preset shapes: it agrees with bitnet.cpp on 5 (TL1)
    # and 6 (TL2) of the 10, and is valid on all.
    monkeypatch.setattr(tiling, "PRESETS", {"tl1": {}, "tl2": {}})
    shapes = [s for m in MODEL_SHAPES.values() for s in m]
    assert [_params("tl1", s) for s in shapes] == [
        (256, 128, 32), (256, 128, 32), (256, 128, 32), (160, 64, 32), (160, 128, 32),
        (192, 128, 32), (256, 128, 32), (256, 128, 32), (256, 128, 32), (256, 128, 32)]
    assert [_params("tl2", s)[:2] for s in shapes] == [
        (256, 96), (256, 96), (256, 96), (160, 96), (160, 96), (192, 96), (256, 96), (256, 96),
        (256, 96), (256, 96)]


def test_tl2_bk_moves_off_96_when_needed():
    # K = 1000: 1000 % 96 = 40 (not a multiple of 32); 72 -> 1000 % 72 = 64 is nearest valid
    t = tiling.choose("tl2", (32, 1000))
    assert (t.BK, t.three_k, t.two_k) == (72, 936, 64)
    # K = 1032: every multiple of 24 from 48 to 1032 leaves 24, 72, 120 or 168 columns (no
    # multiple of 32) except 24 itself, which leaves 0
    assert (tiling.choose("tl2", (32, 1032)).BK, tiling.choose("tl2", (32, 1032)).two_k) == (24, 0)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 600), st.integers(16, 2400))
def test_rule_always_valid(m32, k8):
    M, K = 32 * m32, 8 * k8
    t2 = tiling.choose("tl2", (M, K))        # every K >= 128 that is a multiple of 8 tiles
    assert tiling.problem(t2) is None and t2.BM <= 256 and M % t2.BM == 0
    if K % 16 == 0:
        t1 = tiling.choose("tl1", (M, K))
        assert tiling.problem(t1) is None and t1.BK in (16, 32, 64, 128)


# --- 3. errors: shapes with no tiling ---

@pytest.mark.parametrize("fmt, shape, msg", [
    # 1bitLLM bitnet_b1_58-xl: intermediate 5460
    ("tl1", (5460, 2048), "out_features must be a multiple of 32, got 5460"),
    ("tl2", (5460, 2048), "out_features must be a multiple of 32, got 5460"),
    ("tl1", (2048, 5460), "in_features must be a multiple of 16, got 5460"),
    ("tl2", (2048, 5460), ("in_features must be a multiple of BK (a multiple of 24) plus a "
                           "remainder that is a multiple of 32 and at most 256")),
    ("tl1", (100, 256), "out_features must be a multiple of 32, got 100"),
])
def test_no_tiling(fmt, shape, msg):
    with pytest.raises(PackError) as e:
        tiling.choose(fmt, shape)
    assert str(e.value) == f"{fmt} cannot tile shape {shape}: {msg}"
    with pytest.raises(PackError):
        tiling.kernel_config(fmt, [(256, 256), shape])


@pytest.mark.parametrize("t, msg", [
    (Tiling("tl1", 64, 64, 64, 64, 16), "bm must be 32 or 64, got 16"),
    (Tiling("tl1", 64, 64, 48, 64, 32), "BM must be a multiple of bm = 32, got 48"),
    (Tiling("tl1", 96, 64, 64, 64, 32), "out_features must be a multiple of BM = 64, got 96"),
    (Tiling("tl1", 64, 64, 64, 4, 32), "BK must be a multiple of by = 8, got 4"),
    (Tiling("tl1", 64, 96, 64, 64, 32), "in_features must be a multiple of BK = 64, got 96"),
    (Tiling("tl1", 64, 8, 64, 8, 32), "in_features must be a multiple of 16, got 8"),
    (Tiling("tl2", 64, 256, 64, 48, 32), "in_features % BK must be a multiple of 32, got 16"),
    (Tiling("tl2", 64, 320, 64, 96, 32), None),
    (Tiling("tl2", 64, 600, 64, 312, 32), "in_features % BK must be at most 256, got 288"),
    (Tiling("tl2", 64, 256, 64, 40, 32), "BK must be a multiple of 24, got 40"),
    (Tiling("tl2", 64, 256, 64, 264, 32), "BK = 264 exceeds in_features = 256"),
])
def test_problem_messages(t, msg):
    assert tiling.problem(t) == msg


# --- 4. the kernel configuration file ---

FIXTURE_SHAPES = [(256, 256), (128, 256), (128, 256), (256, 256), (512, 256), (512, 256),
                  (256, 512)]


def test_kernel_config_fixture_tl2_exact():
    expected = (
        "; bitnet.cpp TL2 kernel configuration for the ternary weight shapes of one model "
        "(m = out_features, k = in_features),\n"
        "; written by bitconv; the converter reads it as include/kernel_config.ini. Build the "
        "matching kernels with\n"
        ';   ModelShapeDict["<model>"] = [[256, 256], [128, 256], [512, 256], [256, 512]]   '
        "(in utils/codegen_tl2.py)\n"
        ";   python utils/codegen_tl2.py --model <model> --BM 256,128,256,256 --BK 96,96,96,96 "
        "--bm 32,32,32,32\n"
        "[Kernels_0]\nm = 256\nk = 256\nbm = 256\nbk = 96\nbmm = 32\n\n"
        "[Kernels_1]\nm = 128\nk = 256\nbm = 128\nbk = 96\nbmm = 32\n\n"
        "[Kernels_2]\nm = 512\nk = 256\nbm = 256\nbk = 96\nbmm = 32\n\n"
        "[Kernels_3]\nm = 256\nk = 512\nbm = 256\nbk = 96\nbmm = 32\n\n")
    assert tiling.kernel_config("tl2", FIXTURE_SHAPES) == expected.encode()


@pytest.mark.parametrize("fmt", ["tl1", "tl2"])
def test_kernel_config_reads_like_bitnet_converter(fmt):
    # preprocess_weights_tl{1,2}: ConfigParser().read(...), match m/k, take bm, bk, bmm
    config = configparser.ConfigParser()
    config.read_string(tiling.kernel_config(fmt, FIXTURE_SHAPES + B2_4T).decode())
    got = {(int(config.get(s, "m")), int(config.get(s, "k"))):
           (int(config.get(s, "bm")), int(config.get(s, "bk")), int(config.get(s, "bmm")))
           for s in config.sections()}
    assert list(got) == list(dict.fromkeys(FIXTURE_SHAPES + B2_4T))
    assert all(got[s] == _params(fmt, s) for s in got)
