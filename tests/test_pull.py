"""`bitconv pull` against a local fake hub: happy path, no re-transfer, pack, faults, offline.

Every failure is one pinned line on stderr, and leaves no unverified file behind.
The `hub` fixture (tests/conftest.py) serves every fixture under its real repo id and points
bitconv at it.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from bitconv.stages.snapshot import MANIFEST, select
from bitconv.synth.checkpoints import FIXTURES
from tests.support.cli import cli

REPO = FIXTURES["bitnet-b1.58-2B-4T-bf16"].repo      # microsoft/bitnet-b1.58-2B-4T-bf16
PACKED = FIXTURES["bitnet-b1.58-2B-4T"].repo         # microsoft/bitnet-b1.58-2B-4T
FILES = ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
         "tokenizer.json", "tokenizer_config.json"]   # the bf16 fixture: all of it is needed


def cache(tmp_path) -> Path:
    return tmp_path / "hf_home" / "hub" / ("models--" + REPO.replace("/", "--"))


def snapshot_dir(tmp_path, hub) -> Path:
    return cache(tmp_path) / "snapshots" / hub.commit(REPO)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def fails(r, code, message):
    assert (r.exit_code, r.stderr, r.stdout) == (code, f"Error: {message}\n", ""), r.exception


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.endswith(".incomplete")]


# -- happy path -----------------------------------------------------------------------------------
def test_pull_prints_the_snapshot_and_writes_a_manifest(hub, tmp_path, fixtures_root):
    r = cli("pull", REPO)
    sha = hub.commit(REPO)
    snap = cache(tmp_path) / "snapshots" / sha
    assert (r.exit_code, r.stdout, r.stderr) == (0, f"{snap}\n", "")
    assert sorted(p.name for p in snap.iterdir()) == sorted(FILES + [MANIFEST])
    src = fixtures_root / "bitnet-b1.58-2B-4T-bf16"
    for f in FILES:
        assert (snap / f).read_bytes() == (src / f).read_bytes()
    m = json.loads((snap / MANIFEST).read_text())
    assert (m["repo"], m["revision"], m["sha"], m["complete"], m["include"]) == \
        (REPO, "main", sha, True, None)
    assert [(f["path"], f["size"], f["sha256"]) for f in m["files"]] == \
        [(f, (src / f).stat().st_size, sha256((src / f).read_bytes())) for f in FILES]
    assert (cache(tmp_path) / "refs" / "main").read_text() == sha
    assert leftovers(tmp_path) == []


def test_pull_json(hub):
    r = cli("pull", REPO, "--json")
    d = json.loads(r.stdout)
    assert (d["sha"], d["complete"]) == (hub.commit(REPO), True)
    assert Path(d["path"]).name == hub.commit(REPO) and len(d["files"]) == len(FILES)


def test_second_pull_transfers_and_hashes_nothing(hub, monkeypatch):
    first = cli("pull", REPO).stdout
    hub.log.clear()
    monkeypatch.setattr("bitconv.stages.snapshot.digest", lambda *a: pytest.fail("re-hashed"))
    assert cli("pull", REPO).stdout == first
    assert [h.path for h in hub.log if "agent-harnesses" not in h.path] == \
        [f"/api/models/{REPO}/revision/main"]  # one metadata call, no file request
    hub.log.clear()
    assert cli("pull", REPO, "--revision", hub.commit(REPO)).stdout == first
    assert hub.log == []  # a pinned commit verified before: no network at all


def test_touched_file_is_rehashed_not_refetched(hub, tmp_path):
    cli("pull", REPO)
    f = snapshot_dir(tmp_path, hub) / "model.safetensors"
    os.utime(f, ns=(0, 0))
    hub.log.clear()
    assert cli("pull", REPO).exit_code == 0
    assert hub.files_served("GET") == []
    m = json.loads((f.parent / MANIFEST).read_text())
    assert [e["mtime_ns"] for e in m["files"] if e["path"] == "model.safetensors"] == [0]


def test_tampered_cache_file_is_fetched_again(hub, tmp_path, fixtures_root):
    cli("pull", REPO)
    f = snapshot_dir(tmp_path, hub) / "model.safetensors"  # a link to the blob: edit the blob
    with open(f, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff")
    hub.log.clear()
    assert cli("pull", REPO).exit_code == 0
    assert hub.files_served("GET") == ["model.safetensors"]
    assert f.read_bytes() == (fixtures_root / "bitnet-b1.58-2B-4T-bf16/model.safetensors").read_bytes()


def test_progress_bar_goes_to_stderr(hub, capsys):
    from bitconv.stages.pull import pull
    pull(REPO, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and f"pull {REPO}" in err


def test_local_dir_and_include(hub, tmp_path):
    d = tmp_path / "bf16"
    r = cli("pull", REPO, "--local-dir", d, "--include", "*.json")
    assert (r.exit_code, r.stdout) == (0, f"{d}\n")
    assert sorted(p.name for p in d.iterdir() if p.is_file()) == sorted(
        [f for f in FILES if f.endswith(".json")] + [MANIFEST])
    assert not any(p.is_symlink() for p in d.iterdir())
    assert not (cache(tmp_path) / "refs").exists()
    sha7 = hub.commit(REPO)[:7]
    fails(cli("pull", REPO, "--include", "nope*"), 1,
          f"{REPO}@{sha7}: no file matches --include nope*")


def test_stray_weights_in_local_dir_are_refused(hub, tmp_path):
    d = tmp_path / "bf16"
    cli("pull", REPO, "--local-dir", d)
    (d / "model-00001-of-00002.safetensors").write_bytes(b"old")
    fails(cli("pull", REPO, "--local-dir", d), 1,
          f"{d}/model-00001-of-00002.safetensors is not part of {REPO}@{hub.commit(REPO)[:7]}: "
          "remove it, or pull into an empty --local-dir")


def test_new_commit_on_main_fetches_only_what_changed(fixture_copy, tmp_path, monkeypatch, hub):
    repo_dir = fixture_copy("bitnet-b1.58-2B-4T-bf16")
    hub.repos = {REPO: repo_dir}
    hub.reload()
    first = cli("pull", REPO).stdout
    (repo_dir / "config.json").write_text((repo_dir / "config.json").read_text() + " ")
    hub.reload()
    hub.log.clear()
    second = cli("pull", REPO).stdout
    assert second != first and second.strip().endswith(hub.commit(REPO))
    assert hub.files_served("GET") == ["config.json"]  # the other blobs are shared
    assert (cache(tmp_path) / "refs" / "main").read_text() == hub.commit(REPO)


def test_pull_then_pack_and_verify(hub, tmp_path):
    snap = cli("pull", REPO).stdout.strip()
    out = tmp_path / "m.gguf"
    r = cli("pack", snap, "-o", out)
    assert (r.exit_code, r.stdout) == (0, f"{out}\n"), r.stderr
    r = cli("verify", out, "--source", snap)
    assert r.exit_code == 0, r.stdout + r.stderr


def test_pack_owner_name_pulls_first(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("pack", PACKED)
    assert (r.exit_code, r.stdout) == (0, "bitnet-b1.58-2B-4T-i2s.gguf\n"), r.stderr
    assert (tmp_path / "bitnet-b1.58-2B-4T-i2s.gguf").stat().st_size > 0
    sha = hub.commit(PACKED)
    snap = tmp_path / "hf_home/hub/models--microsoft--bitnet-b1.58-2B-4T/snapshots" / sha
    assert json.loads((snap / MANIFEST).read_text())["complete"] is True


@pytest.mark.parametrize("fmt, name", [("tq2_0", "bitnet-b1.58-2B-4T-tq2_0.gguf"),
                                       ("hf", "bitnet-b1.58-2B-4T-hf")])
def test_pack_owner_name_names_the_output_by_container(hub, tmp_path, monkeypatch, fmt, name):
    # a directory output (hf) is never named *.gguf (it once was: `<name>-hf.gguf/`)
    monkeypatch.chdir(tmp_path)
    r = cli("pack", PACKED, "--format", fmt)
    assert (r.exit_code, r.stdout) == (0, f"{name}\n"), r.stderr
    assert (tmp_path / name).is_dir() == (fmt == "hf")
    assert (tmp_path / name).exists()


# -- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_corrupt_bytes_are_fetched_again_then_refused(hub, tmp_path, fixtures_root, name):
    hub.inject("corrupt", match=name)
    r = cli("pull", REPO)
    good = (fixtures_root / "bitnet-b1.58-2B-4T-bf16" / name).read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    if name.endswith(".safetensors"):
        what = f"sha256 {sha256(bad)[:12]}… (the hub lists {sha256(good)[:12]}…)"
    else:
        oid = lambda b: hashlib.sha1(b"blob %d\0" % len(b) + bytes(b)).hexdigest()[:12]
        what = f"git blob id {oid(bad)}… (the hub lists {oid(good)}…)"
    fails(r, 4, f"{REPO}@{hub.commit(REPO)[:7]}: {name}: {what} after a second download; "
                "deleted it (the hub, a mirror or a proxy serves corrupt bytes)")
    assert hub.files_served("GET").count(name) == 2
    snap = snapshot_dir(tmp_path, hub)
    assert not (snap / name).exists() and not (snap / name).is_symlink()
    blobs = (cache(tmp_path) / "blobs").iterdir()
    assert sha256(bad) not in {sha256(p.read_bytes()) for p in blobs}
    assert json.loads((snap / MANIFEST).read_text())["complete"] is False


def test_corrupt_once_recovers(hub):
    hub.inject("corrupt", match="model.safetensors", times=1)
    assert cli("pull", REPO).exit_code == 0
    assert hub.files_served("GET").count("model.safetensors") == 2


@pytest.mark.parametrize("chunk,statuses", [(None, [200, 200]), (1 << 16, [200, 206])])
def test_dropped_connection_recovers(hub, monkeypatch, chunk, statuses):
    # huggingface_hub hands bytes over in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces: a drop inside the
    # first piece restarts the file (200); after whole pieces it resumes with a Range (206)
    import huggingface_hub.constants as hfc
    import huggingface_hub.file_download as fd
    monkeypatch.setattr(fd, "time", SimpleNamespace(sleep=lambda s: None))  # its 1 s retry wait
    if chunk:
        monkeypatch.setattr(hfc, "DOWNLOAD_CHUNK_SIZE", chunk)
    hub.inject("drop", match="model.safetensors", offset=1_000_000, times=1)
    assert cli("pull", REPO).exit_code == 0
    gets = [h for h in hub.log if h.file == "model.safetensors" and h.method == "GET"]
    assert [h.status for h in gets] == statuses and gets[0].sent == 1_000_000


def test_connection_dropping_for_good(hub, tmp_path, monkeypatch):
    import huggingface_hub.file_download as fd
    monkeypatch.setattr(fd, "time", SimpleNamespace(sleep=lambda s: None))
    hub.inject("drop", match="model.safetensors", offset=1_000_000)
    fails(cli("pull", REPO), 4,
          f"{REPO}@{hub.commit(REPO)[:7]}: model.safetensors: the connection kept dropping and "
          "the transfer could not resume; pull again: verified files are kept")
    assert not (snapshot_dir(tmp_path, hub) / "model.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_interrupted_pull_continues_where_it_stopped(hub, tmp_path, monkeypatch):
    hub.inject("status", match="model.safetensors", method="GET", status=500, times=1)
    fails(cli("pull", REPO), 4,
          f"{REPO}@{hub.commit(REPO)[:7]}: model.safetensors: localhost:{hub.port} answered "
          "HTTP 500; try again later")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the listing was saved: offline names what is left
    fails(cli("pull", REPO), 1,
          f"{REPO}@{hub.commit(REPO)[:7]}: offline, and 4 file(s) are missing from "
          f"{snapshot_dir(tmp_path, hub)}: model.safetensors, special_tokens_map.json, "
          "tokenizer.json, tokenizer_config.json; pull again with network")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub.log.clear()
    assert cli("pull", REPO).exit_code == 0
    assert hub.files_served("GET") == FILES[2:]  # config and generation config were kept


@pytest.mark.parametrize("case", ["missing repo", "401", "revision", "500"])
def test_hub_refusals(hub, tmp_path, case):
    host = urlsplit(hub.url).netloc
    args, message, code = ["pull", REPO], "", 1
    if case == "missing repo":
        args[1] = "microsoft/no-such-model"
    if case in ("missing repo", "401"):
        message = (f"{args[1]}: no such model on {hub.url} (if it is private, set HF_TOKEN to "
                   "a token that can read it)")
    if case == "401":
        hub.inject("status", match="/api/models", status=401, error_code="RepoNotFound")
    if case == "revision":
        args += ["--revision", "v9"]
        message = f"{REPO}: no revision 'v9' on {hub.url}"
    if case == "500":
        hub.inject("status", match="/api/models", status=500)
        message, code = f"{REPO}: {host} answered HTTP 500; try again later", 4
    fails(cli(*args), code, message)
    assert not (tmp_path / "hf_home" / "hub").exists() or not any(
        (tmp_path / "hf_home" / "hub").glob("models--*"))


@pytest.mark.parametrize("token,status", [(None, 401), ("hf_wrong", 403), ("hf_right", 0)])
def test_gated_repo(hub, tmp_path, monkeypatch, token, status):
    hub.gated, hub.token = {REPO}, "hf_right"
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    r = cli("pull", REPO)
    if status == 0:
        assert r.exit_code == 0, r.stderr
        return
    fails(r, 1, f"{REPO} is gated (HTTP {status}): accept its conditions on the model page, "
                "then set HF_TOKEN to a token of that account")
    assert [p.name for p in snapshot_dir(tmp_path, hub).iterdir()] == [MANIFEST]


def test_stalled_hub_times_out(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.5")
    hub.inject("stall", match="/api/models")
    t = time.monotonic()
    fails(cli("pull", REPO), 4, f"{REPO}: no answer from {urlsplit(hub.url).netloc} within 0.5 s "
                                "(HF_HUB_ETAG_TIMEOUT); try again later, or raise the timeout")
    assert time.monotonic() - t < 5


def test_stalled_transfer_gives_up(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc
    import huggingface_hub.file_download as fd
    monkeypatch.setattr(hfc, "HF_HUB_DOWNLOAD_TIMEOUT", 0.2)  # what the env var sets at import
    monkeypatch.setattr(fd, "time", SimpleNamespace(sleep=lambda s: None))
    hub.inject("stall", match="model.safetensors", method="GET")
    fails(cli("pull", REPO), 4,
          f"{REPO}@{hub.commit(REPO)[:7]}: model.safetensors: the transfer stalled "
          "(HF_HUB_DOWNLOAD_TIMEOUT) and did not resume; pull again: verified files are kept")
    assert not (snapshot_dir(tmp_path, hub) / "model.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_stalled_transfer_resumes_in_a_real_process(hub, tmp_path):
    # the env vars as a user sets them, read by huggingface_hub at import in a fresh process
    hub.inject("stall", match="model.safetensors", method="GET", offset=1_000_000, times=1)
    env = {**os.environ, "HF_HOME": str(tmp_path / "proc"), "HF_ENDPOINT": hub.url,
           "HF_HUB_OFFLINE": "0", "HF_HUB_DOWNLOAD_TIMEOUT": "1", "HF_HUB_DISABLE_XET": "1"}
    p = subprocess.run([sys.executable, "-m", "bitconv", "pull", REPO], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    snap = tmp_path / "proc/hub/models--microsoft--bitnet-b1.58-2B-4T-bf16/snapshots"
    assert (p.returncode, p.stdout) == (0, f"{snap / hub.commit(REPO)}\n"), p.stderr
    assert hub.files_served("GET").count("model.safetensors") == 2  # stalled, then again


def test_unreachable_hub(hub, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    fails(cli("pull", REPO), 4, f"{REPO}: cannot connect to 127.0.0.1:{port} ([Errno 111] "
                                "Connection refused); check the network and HF_ENDPOINT, or pull "
                                "with --offline")


@pytest.mark.parametrize("path", ["../evil.safetensors", "/tmp/evil.json", "a/../../evil.json"])
def test_hostile_paths_are_refused_before_any_transfer(hub, tmp_path, path):
    hub.add_file(REPO, path, b"pwned")
    r = cli("pull", REPO, "--local-dir", tmp_path / "target", "--include", "*")
    fails(r, 1, f"{REPO}@{hub.commit(REPO)[:7]}: the hub lists an unsafe path {path!r}; "
                "refusing to pull from it")
    assert [h for h in hub.log if h.file] == []
    assert not list(tmp_path.parent.rglob("evil*")) and not Path("/tmp/evil.json").exists()


def test_bad_repo_id(hub):
    fails(cli("pull", "not a repo"), 1, "'not a repo' is not a Hugging Face repo id (owner/name)")


# -- offline --------------------------------------------------------------------------------------
def test_offline_uses_the_cache_and_names_what_is_missing(hub, tmp_path, monkeypatch):
    first = cli("pull", REPO).stdout
    hub.log.clear()
    assert cli("pull", REPO, "--offline").stdout == first
    assert hub.log == []
    snap = snapshot_dir(tmp_path, hub)
    (snap / "tokenizer.json").unlink()
    fails(cli("pull", REPO, "--offline"), 1,
          f"{REPO}@{hub.commit(REPO)[:7]}: offline, and 1 file(s) are missing from {snap}: "
          "tokenizer.json; pull again with network")


def test_pack_owner_name_offline_and_not_cached(tmp_path):
    fails(cli("pack", PACKED), 1, f"{PACKED}@main: offline, and not in the cache "
                                  f"({tmp_path / 'hf_home' / 'hub'}); pull it once with network")


# -- the fake hub itself --------------------------------------------------------------------------
def test_fake_hub_serves_what_huggingface_hub_expects(hub, tmp_path):
    from huggingface_hub import HfApi, snapshot_download
    p = snapshot_download(REPO, cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    v = HfApi(endpoint=hub.url, token=False).verify_repo_checksums(
        REPO, revision=hub.commit(REPO), cache_dir=tmp_path / "c")
    assert Path(p).name == hub.commit(REPO)
    assert (v.checked_count, v.mismatches, v.missing_paths) == (len(FILES), [], [])
    assert select(FILES, None) == FILES  # the default selection takes all of this repo
