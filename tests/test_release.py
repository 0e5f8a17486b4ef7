"""`bitconv release` of the demo recipe from the local fake hub: artifacts, manifest, sums,
idempotence, determinism across -j, and failure without publishing."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from bitconv.stages.recipes import load_recipe
from tests.support.cli import cli

RECIPE = Path(__file__).parent.parent / "recipes" / "demo.toml"


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_release_end_to_end(hub, tmp_path):
    out = tmp_path / "rel"
    r = cli("release", RECIPE, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [a["format"] for a in res["artifacts"]] == ["i2s", "tl1", "tl2", "tq2_0", "hf"]
    assert all(a["rebuilt"] and a["verify"] == "ok" for a in res["artifacts"])
    m = json.loads((out / "MANIFEST.json").read_text())
    assert m["source"]["repo"] == "bitconv/tiny-bitnet-b1.58-2B-4T-bf16"
    assert m["source"]["sha"] == res["sha"] and len(res["sha"]) == 40
    assert m["source"]["inputs"]["model.safetensors"] == sha256(
        Path(hub.repos["bitconv/tiny-bitnet-b1.58-2B-4T-bf16"]) / "model.safetensors")
    # every file in the release is listed, and every listed hash is recomputed here
    listed = {k: v for a in m["artifacts"] for k, v in a["files"].items()}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(listed) | {"MANIFEST.json", "SHA256SUMS"}
    for name, v in listed.items():
        assert sha256(out / name) == v["sha256"] and (out / name).stat().st_size == v["size"]
    sums = dict(reversed(line.split("  ", 1)) for line in (out / "SHA256SUMS").read_text()
                .splitlines())
    assert {k: v["sha256"] for k, v in listed.items()} == sums
    assert "demo-tl2.gguf.kernel_config.ini" in listed  # the TL sidecar is part of the artifact
    assert "demo-hf/model.safetensors" in listed


def test_second_release_rebuilds_nothing_and_is_identical(hub, tmp_path):
    out = tmp_path / "rel"
    assert cli("release", RECIPE, "--out", out).exit_code == 0
    before = (out / "MANIFEST.json").read_bytes(), (out / "SHA256SUMS").read_bytes()
    r = cli("release", RECIPE, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert not any(a["rebuilt"] for a in json.loads(r.stdout)["artifacts"])
    assert ((out / "MANIFEST.json").read_bytes(), (out / "SHA256SUMS").read_bytes()) == before


def test_release_is_deterministic_across_jobs(hub, tmp_path):
    assert cli("release", RECIPE, "--out", tmp_path / "a", "-j", "1").exit_code == 0
    assert cli("release", RECIPE, "--out", tmp_path / "b", "-j", "2").exit_code == 0
    assert (tmp_path / "a" / "SHA256SUMS").read_bytes() == (tmp_path / "b" / "SHA256SUMS").read_bytes()
    assert (tmp_path / "a" / "MANIFEST.json").read_bytes() == \
        (tmp_path / "b" / "MANIFEST.json").read_bytes()


def test_a_corrupted_artifact_is_rebuilt(hub, tmp_path):
    out = tmp_path / "rel"
    assert cli("release", RECIPE, "--out", out).exit_code == 0
    good = sha256(out / "demo-i2s.gguf")
    with open(out / "demo-i2s.gguf", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\xff")
    r = cli("release", RECIPE, "--out", out, "--json")
    rebuilt = {a["format"] for a in json.loads(r.stdout)["artifacts"] if a["rebuilt"]}
    assert rebuilt == {"i2s"} and sha256(out / "demo-i2s.gguf") == good


def test_a_corrupted_hf_directory_is_replaced(hub, tmp_path):
    """A directory artifact is replaced whole (moved aside, renamed over, removed)."""
    out = tmp_path / "rel"
    assert cli("release", RECIPE, "--out", out).exit_code == 0
    good = sha256(out / "demo-hf" / "model.safetensors")
    (out / "demo-hf" / "stray.txt").write_text("left by someone")
    with open(out / "demo-hf" / "model.safetensors", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\xff")
    r = cli("release", RECIPE, "--out", out, "--json")
    rebuilt = {a["format"] for a in json.loads(r.stdout)["artifacts"] if a["rebuilt"]}
    assert rebuilt == {"hf"} and sha256(out / "demo-hf" / "model.safetensors") == good
    assert not (out / "demo-hf" / "stray.txt").exists()
    assert not list(out.glob("*.incomplete")) and not (out / ".staging").exists()


def test_a_failing_verify_publishes_nothing(hub, tmp_path, monkeypatch):
    import bitconv.stages.verify as verify_mod

    real = verify_mod.verify

    def broken(path, **kw):  # a verify that finds a mismatch in the tq2_0 artifact
        rep = real(path, **kw)
        if str(path).endswith("tq2_0.gguf"):
            bad = verify_mod.Finding("FAIL", "tensors", "blk.0.attn_q.weight: 1 values differ")
            return verify_mod.Report(rep.path, rep.source, (*rep.findings[:1], bad))
        return rep

    monkeypatch.setattr("bitconv.stages.release.verify", broken)  # the name release calls
    out = tmp_path / "rel"
    r = cli("release", RECIPE, "--out", out)
    assert r.exit_code == 3
    assert r.stderr.startswith("Error: demo-tq2_0.gguf: ")
    assert "tensors: blk.0.attn_q.weight: 1 values differ" in r.stderr
    assert not (out / "MANIFEST.json").exists() and not list(out.glob("demo-*"))


def test_recipe_facts_are_checked_against_the_pulled_config(hub, tmp_path):
    recipe = tmp_path / "demo.toml"
    recipe.write_text(RECIPE.read_text().replace("layers = 2", "layers = 3"))
    r = cli("release", recipe, "--out", tmp_path / "rel")
    assert r.exit_code == 1
    assert r.stderr == (f"Error: {recipe}: [model] layers = 3, but the checkpoint's config.json "
                        "has num_hidden_layers = 2\n")


@pytest.mark.parametrize("edit, message", [
    (('family = "bitnet-b1.58"', 'family = "llama"'),
     'family = "llama", but the checkpoint\'s config.json is of family bitnet-b1.58'),
    (("tied = true", "tied = false"),
     "[model] tied = false, but the checkpoint's config.json has tie_word_embeddings = true"),
    (("params = 1444608", "params = 1444609"),
     "[model] params = 1444609, but the checkpoint's tensors hold 1444608 parameters"),
])
def test_every_declared_fact_is_checked_before_packing(hub, tmp_path, edit, message):
    recipe = tmp_path / "demo.toml"
    text = RECIPE.read_text()
    assert edit[0] in text
    recipe.write_text(text.replace(*edit))
    r = cli("release", recipe, "--out", tmp_path / "rel")
    assert r.exit_code == 1
    assert r.stderr == f"Error: {recipe}: {message}\n"
    assert not (tmp_path / "rel").exists()  # refused before anything was packed


def test_tied_defaults_to_the_family_when_config_json_omits_it(hub, tmp_path):
    """No tie_word_embeddings in config.json: the family's default (bitnet-b1.58 ties)."""
    repo = load_recipe(RECIPE).repo
    config = json.loads((Path(hub.repos[repo]) / "config.json").read_text())
    del config["tie_word_embeddings"]
    hub.add_file(repo, "config.json", json.dumps(config).encode())
    recipe = tmp_path / "demo.toml"
    recipe.write_text(RECIPE.read_text().replace("tied = true", "tied = false"))
    r = cli("release", recipe, "--out", tmp_path / "rel")
    assert r.exit_code == 1
    assert r.stderr == (f"Error: {recipe}: [model] tied = false, but the checkpoint's config.json "
                        "has no tie_word_embeddings and family bitnet-b1.58 defaults to true\n")
    # the shipped recipe (tied = true) agrees
    assert cli("release", RECIPE, "--out", tmp_path / "ok").exit_code == 0


def test_recipe_lock_records_the_commit_and_inputs(hub, tmp_path):
    recipe = tmp_path / "demo.toml"
    shutil.copy(RECIPE, recipe)
    r = cli("recipe", "lock", recipe)
    assert r.exit_code == 0, r.output
    locked = load_recipe(recipe)
    assert locked.commit == r.stdout.strip() and len(locked.commit) == 40
    assert set(locked.inputs) >= {"model.safetensors", "config.json"}
    # a locked recipe releases, and a changed input is refused
    assert cli("release", recipe, "--out", tmp_path / "rel").exit_code == 0
    text = recipe.read_text()
    h = locked.inputs["model.safetensors"]
    recipe.write_text(text.replace(h, "0" * 64))
    r = cli("release", recipe, "--out", tmp_path / "rel")
    assert r.exit_code == 1 and "input model.safetensors has sha256 " in r.stderr
