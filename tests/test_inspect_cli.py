"""`bitconv inspect` and the CLI's contracts (help, stdout discipline, layering)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bitconv.cli import FORMAT_NAMES
from bitconv.cli import cli as bitconv
from bitconv.containers.gguf_reader import read_gguf
from bitconv.formats.registry import CODECS
from bitconv.types import TernaryTensor
from tests.support.cli import cli

PKG = Path(__file__).resolve().parents[1] / "bitconv"


def test_inspect_gguf_lists_every_tensor_with_type_shape_bytes(packed):
    out = packed("Llama3-8B-1.58-100B-tokens", "i2s")
    r = cli("inspect", out)
    assert r.exit_code == 0, r.stderr
    gf = read_gguf(out)
    lines = r.stdout.splitlines()
    for t in gf.tensors:
        row = next(line for line in lines if line.split()[:1] == [t.name])
        type_name, nbytes = row.split()[1], int(row.split()[-1].replace(",", ""))
        assert type_name == {0: "F32", 1: "F16", 36: "I2_S"}[t.ggml_type]
        assert f"{list(reversed(t.shape))}" in row  # GGUF order: ne0 (in_features) first
        assert nbytes == t.nbytes
    assert lines[-1] == f"{len(gf.tensors)} tensors, {sum(t.nbytes for t in gf.tensors):,} bytes"
    assert any(line.startswith("general.architecture") and line.endswith("llama") for line in lines)
    # I2_S bytes: n/4 + 32, e.g. q_proj 256x256 -> 16,416
    assert any(line.startswith("blk.0.attn_q.weight") and line.endswith("16,416") for line in lines)


def test_inspect_checkpoint_json(fixtures_root):
    r = cli("inspect", fixtures_root / "bitnet-b1.58-2B-4T", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["kind"] == "checkpoint"
    assert d["summary"]["gguf arch"] == "bitnet-b1.58"
    assert d["summary"]["scale rule"] == "multiply by weight_scale (linear_class autobitlinear)"
    q = next(t for t in d["tensors"] if t["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert (q["type"], q["shape"], q["nbytes"]) == ("U8", [64, 256], 64 * 256)
    # 2 layers x (7 weights + 7 scales + 4 norms) + embedding + final norm
    assert len(d["tensors"]) == 2 * 18 + 2


def test_inspect_llama_is_divide(fixtures_root):
    r = cli("inspect", fixtures_root / "Llama3-8B-1.58-100B-tokens")
    assert "scale rule  divide by weight_scale (linear_class bitlinear)" in r.stdout
    assert "model-00001-of-00002.safetensors, model-00002-of-00002.safetensors" in r.stdout


def test_inspect_missing_path(tmp_path):
    r = cli("inspect", tmp_path / "nope.gguf")
    assert r.exit_code == 1
    assert r.stderr == f"Error: {tmp_path / 'nope.gguf'}: no such file or directory\n"


def test_inspect_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOPE" + bytes(100))
    r = cli("inspect", p)
    assert r.exit_code == 1
    assert r.stderr == f"Error: {p}: not a GGUF file (bad magic)\n"


def test_usage_error_is_exit_2(tmp_path):
    r = cli("pack", tmp_path, "--format", "q4_0")
    assert r.exit_code == 2


def test_help_on_every_command():
    for name in bitconv.commands:
        r = cli(name, "--help")
        assert r.exit_code == 0 and "Usage:" in r.stdout, name


def test_cli_format_choices_match_the_registry():
    assert tuple(sorted([*CODECS, "hf"])) == tuple(sorted(FORMAT_NAMES))


def test_only_cli_imports_click_and_nobody_prints():
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and path.name != "cli.py":
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert "click" not in names, f"{path} imports click"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                raise AssertionError(f"{path} calls print()")


def test_fixtures_are_deterministic(tmp_path):
    from bitconv.synth.checkpoints import make_fixture
    for name in ["bitnet-b1.58-2B-4T", "bitnet_b1_58-large"]:
        a, b = make_fixture(name, tmp_path / "a" / name), make_fixture(name, tmp_path / "b" / name)
        files = sorted(p.name for p in a.iterdir())
        assert files == sorted(p.name for p in b.iterdir())
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_inspect_labels_lossless_and_lossy_variants(packed):
    name = "bitnet_b1_58-large"  # absmean multipliers: none is exact in fp16
    exact = packed(name, "tq2_0")
    lossy = packed(name, "tq2_0-fp16")
    r = cli("inspect", exact)
    cols = {c[0]: c[1:] for c in (re.split(r" {2,}", line) for line in r.stdout.splitlines())}
    label = "tq2_0 (lossless: float32 multipliers in F32 companion tensors)"
    assert cols["ternary format"] == [label]
    assert cols["blk.0.attn_q.weight"][:2] == ["TQ2_0", "tq2_0"]
    assert cols["blk.0.attn_q.scale"][:2] == ["F32", "tq2_0 companion"]
    assert cols["token_embd.weight"][:2] == ["F16", "-"]
    assert "max weight error" not in cols

    info = json.loads(cli("inspect", lossy, "--json").stdout)
    assert info["summary"]["ternary format"] == ("tq2_0-fp16 (lossy: each multiplier rounded "
                                                 "to an fp16 d)")
    codecs = {t["name"]: t["codec"] for t in info["tensors"]}
    assert codecs["blk.0.attn_q.weight"] == "tq2_0-fp16" and codecs["token_embd.weight"] is None
    assert not any(n.endswith(".scale") for n in codecs)
    # the exact multipliers are in the lossless file; the lossy one holds d = fp16(m)
    from bitconv.runtime.weights import load_gguf
    a, b = load_gguf(exact), load_gguf(lossy)
    ternary = [n for n in a.order if isinstance(a.tensors[n], TernaryTensor)]
    d = {n: np.float16(b.tensors[n].multiplier) for n in ternary}
    widest = max(ternary, key=lambda n: float(np.spacing(d[n])) / float(d[n]))  # ulp / d
    err = info["summary"]["max weight error"]
    assert err.startswith("<= ") and err.endswith(
        f" relative, in {widest} (fp16 rounding of the multiplier; the exact float32 ones are "
        "not in the file)")
    bound = float(err.split()[1])
    true = [abs(float(d[n]) / float(a.tensors[n].multiplier) - 1) for n in ternary]
    assert len(true) == 14 and 0 < max(true) <= bound * 1.005  # covers the true errors
    half_ulp = float(np.spacing(d[widest])) / 2 / float(d[widest])
    assert bound == pytest.approx(half_ulp, rel=0.01) and bound <= 2.0 ** -11
