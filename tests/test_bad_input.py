"""Bad input on any path, for every command: one line on stderr, exit 1, nothing under the output
name, the inputs untouched.

OS errors are provoked honestly. The tests may run as root, who reads and writes through any
permission bits: for "permission denied" the process drops its effective uid/gid to nobody
(65534) for the one command (`unprivileged`; a non-root run just uses the bits). "Is a
directory", "not a directory", a symlink loop and a name too long need no privileges. "File too
large" comes from RLIMIT_FSIZE in a child process (Python ignores SIGXFSZ, so the write fails
with EFBIG). Not provoked: a full disk (ENOSPC needs a small filesystem, which takes mount
privileges this container lacks) and EIO; both reach the same handler as EFBIG (containers/atomic.py and
cli.py map any OSError), which is what the EFBIG cases pin.

Also here: config.json fields of the wrong JSON type (null included) and safetensors headers
that break the specification (tensor.rs `read_metadata` / `validate`), each named in one line.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitconv.stages.pack import pack
from tests.support.cli import cli

FIXTURE = "bitnet-b1.58-2B-4T"
NOBODY = 65534
RECIPE = Path(__file__).parent.parent / "recipes" / "demo.toml"


@contextlib.contextmanager
def unprivileged(drop: bool = True) -> Iterator[None]:
    """Without root's bypass of permission bits for the block (see the module doc); with
    `drop` false, as we are."""
    if not drop or os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def digest(root: Path) -> dict[str, str]:
    """Every regular file under `root` (symlinks and unreadable files by name only)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or not p.is_file():
            out[str(p)] = "-"
        else:
            with contextlib.suppress(OSError):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(fixtures_root) -> Iterator[Path]:
    """A world-readable tree (nobody must reach it) with one good input of each kind and the
    broken ones. pytest's own tmp dirs are 0700 root, so this lives in its own mkdtemp."""
    # the CLI imports these lazily; as nobody it could not write their bytecode caches
    import bitconv.runtime.generate
    import bitconv.stages.inspect
    import bitconv.stages.logits
    import bitconv.stages.repack
    import bitconv.stages.verify  # noqa: F401

    root = Path(tempfile.mkdtemp(prefix="bitconv-bad-input-"))
    try:
        shutil.copytree(fixtures_root / FIXTURE, root / "ck")
        pack(root / "ck", format="i2s", out=root / "m.gguf")
        (root / "adir").mkdir()
        (root / "adir.npy").mkdir()  # `logits` wants a .npy name before anything else
        (root / "loop").symlink_to(root / "loop2")
        (root / "loop2").symlink_to(root / "loop")
        shutil.copy(root / "m.gguf", root / "noread.gguf")
        for name in ("ck_noread", "ck_cfgdir", "ck_stdir"):
            shutil.copytree(root / "ck", root / name)
        for victim in (root / "ck_cfgdir" / "config.json", root / "ck_stdir" / "model.safetensors"):
            victim.unlink()
            victim.mkdir()
        (root / "ro").mkdir()
        for p in [root, *root.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        (root / "noread.gguf").chmod(0)
        (root / "ck_noread" / "model.safetensors").chmod(0)
        (root / "ro").chmod(0o555)
        yield root
    finally:
        for p in root.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(root)


LONG = "x" * 300  # NAME_MAX is 255 on Linux filesystems

# (case, path under the world, extra, expected line after "Error: " with {p} the path)
GGUF_INPUTS = [
    ("missing", "nope.gguf", "{p}: no such file or directory"),
    ("not_a_dir", "m.gguf/x", "{p}: not a directory"),
    ("loop", "loop", "{p}: too many levels of symbolic links"),
    ("too_long", LONG, "{p}: file name too long"),
    ("no_permission", "noread.gguf", "{p}: permission denied"),
    ("config_is_a_dir", "ck_cfgdir", "{p}/config.json: is a directory"),
    ("shard_is_a_dir", "ck_stdir", "{p}/model.safetensors: is a directory"),
    ("shard_no_permission", "ck_noread", "{p}/model.safetensors: permission denied"),
    ("dir_not_a_model", "adir",
     "{p}: no config.json (is this a Hugging Face checkpoint directory?)"),
]
COMMANDS = {  # every command that reads a model path; {o} is a fresh output path
    "inspect": [],
    "verify": [],
    "logits": ["--tokens", "1,2", "-o", "{o}.npy"],
    "run": ["-p", "hi", "-n", "2"],
    "repack": ["--format", "tq2_0", "-o", "{o}.gguf"],
    "pack": ["-o", "{o}.gguf"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case,rel,line", GGUF_INPUTS, ids=[c[0] for c in GGUF_INPUTS])
def test_os_errors_on_the_input(world, command, case, rel, line):
    p = world / rel
    if command == "pack" and case in ("not_a_dir", "no_permission"):
        pytest.skip("pack takes directories only: covered by the shard cases")
    if command == "verify" and case == "dir_not_a_model":
        pytest.skip("verify reports a directory without config.json as a container FAIL, exit 3")
    before = digest(world)
    with writable_dir(world) as w:
        extra = [a.format(o=w / "out") for a in COMMANDS[command]]
        with unprivileged(case.endswith("permission")):
            r = cli(command, p, *extra)
        assert (r.exit_code, r.stderr) == (1, f"Error: {line.format(p=p)}\n"), r.output
        assert r.stdout == ""
        assert not list(w.iterdir())  # no output, no .incomplete
    assert digest(world) == before


@contextlib.contextmanager
def writable_dir(world: Path) -> Iterator[Path]:
    """An empty directory anyone may write to (outputs of commands run as nobody)."""
    w = Path(tempfile.mkdtemp(dir=world))
    w.chmod(0o777)
    try:
        yield w
    finally:
        shutil.rmtree(w)


def test_verify_source_that_cannot_be_read(world, tmp_path):
    with unprivileged():
        r = cli("verify", world / "m.gguf", "--source", world / "ck_noread")
    assert (r.exit_code, r.stderr) == (
        1, f"Error: {world}/ck_noread/model.safetensors: permission denied\n"), r.output
    r = cli("verify", world / "m.gguf", "--source", world / "loop")
    line = f"Error: {world}/loop: too many levels of symbolic links\n"
    assert (r.exit_code, r.stderr) == (1, line), r.output


OUTPUTS = [  # (case, -o relative to the world, expected line with {o} the output path)
    ("dir_not_writable", "ro/o", "{o}: cannot write (Permission denied)"),
    ("parent_is_a_file", "m.gguf/o", "{parent}: no such directory"),
    ("parent_missing", "nodir/o", "{parent}: no such directory"),
    ("name_too_long", LONG, "{o}: file name too long"),
    ("is_a_directory", "adir", "{o}: is a directory"),
]
WRITERS = {
    "pack": lambda w: ["pack", w / "ck"],
    "pack_hf": lambda w: ["pack", w / "ck", "--format", "hf"],
    "repack": lambda w: ["repack", w / "m.gguf", "--format", "tq2_0"],
    "repack_hf": lambda w: ["repack", w / "m.gguf", "--format", "hf"],
    "logits": lambda w: ["logits", w / "m.gguf", "--tokens", "1,2"],
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("case,rel,line", OUTPUTS, ids=[c[0] for c in OUTPUTS])
def test_os_errors_on_the_output(world, writer, case, rel, line):
    o = world / (rel + (".npy" if writer == "logits" else ""))
    if writer.endswith("_hf") and case == "is_a_directory":
        line = "{o}: already exists; pass --force to overwrite"  # a directory is its output
    before = digest(world)
    with unprivileged(case == "dir_not_writable"):
        r = cli(*WRITERS[writer](world), "-o", o)
    assert (r.exit_code, r.stderr) == (1, f"Error: {line.format(o=o, parent=o.parent)}\n"), \
        r.output
    assert r.stdout == ""
    assert digest(world) == before  # nothing new (no output, no .incomplete), inputs unchanged


def _limited(nbytes: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return preexec


@pytest.mark.parametrize("writer", WRITERS)
def test_file_size_limit_while_writing(world, tmp_path, writer):
    """RLIMIT_FSIZE below the output's size: EFBIG in the middle of the write."""
    o = tmp_path / ("o.npy" if writer == "logits" else "o")
    args = [str(a) for a in WRITERS[writer](world)] + ["-o", str(o)]
    if writer == "logits":
        args[-3] = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"  # 64 KB of logits
    before = digest(world)
    r = subprocess.run([sys.executable, "-m", "bitconv", *args], capture_output=True, text=True,
                       preexec_fn=_limited(30_000), timeout=300, check=False)
    # numpy's tofile drops the errno: "cannot write (16384 requested and 7468 written)"
    reason = "File too large" if writer != "logits" else ""
    assert r.returncode == 1 and r.stderr.startswith(f"Error: {o}: cannot write ({reason}"), \
        r.stderr
    assert r.stderr.count("\n") == 1
    assert r.stdout == ""
    assert not list(tmp_path.iterdir())
    assert digest(world) == before


# --- pull --local-dir and release --out, against the local fake hub ---

PULL_OUT = {  # case: (pull's line, release's line) after "Error: ", D the directory
    # pull's lines come from stages/pull.py's mapping of local-disk errors (repo@sha: strerror: path)
    "parent_is_a_file": ("{repo}@{sha}: Not a directory: D", "D/.staging: not a directory"),
    "loop": ("{repo}@{sha}: File exists: D", "D/.staging: too many levels of symbolic links"),
    "too_long": ("D: file name too long", "D/.staging: file name too long"),
}


@pytest.mark.parametrize("case", PULL_OUT)
def test_pull_local_dir_and_release_out(hub, world, case):
    from bitconv.synth.checkpoints import FIXTURES

    d = {"parent_is_a_file": world / "m.gguf" / "d", "loop": world / "loop",
         "too_long": world / LONG}[case]
    repo = FIXTURES[FIXTURE].repo
    before = digest(world)
    for args, line in zip((["pull", repo, "--local-dir", d], ["release", RECIPE, "--out", d]),
                          PULL_OUT[case]):
        r = cli(*args)
        line = line.format(repo=repo, sha=hub.commit(repo)[:7]).replace("D", str(d))
        assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: {line}\n"), args
    assert digest(world) == before


# --- config.json: every field bitconv reads, of the wrong JSON type ---

def edit_config(ck: Path, key: str, value: object) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    (ck / "config.json").write_text(json.dumps(cfg))


WRONG_TYPES = [  # (field, value, expected type text)
    ("hidden_size", None, "a positive integer below 2^31"),
    ("hidden_size", 256.0, "a positive integer below 2^31"),
    ("hidden_size", True, "a positive integer below 2^31"),
    ("num_hidden_layers", "2", "a positive integer below 2^31"),
    ("vocab_size", [1024], "a positive integer below 2^31"),
    ("max_position_embeddings", 2**40, "a positive integer below 2^31"),
    ("intermediate_size", -1, "a positive integer below 2^31"),
    ("num_key_value_heads", "2", "a positive integer below 2^31"),
    ("head_dim", {}, "a positive integer below 2^31"),
    ("rms_norm_eps", None, "a positive float32 number"),
    ("rms_norm_eps", "1e-5", "a positive float32 number"),
    ("rms_norm_eps", 1e39, "a positive float32 number"),
    ("rope_theta", False, "a positive float32 number"),
    ("architectures", None, "a list of class names"),
    ("architectures", "BitNetForCausalLM", "a list of class names"),
    ("model_type", 7, "a string"),
    ("hidden_act", None, "a string"),
    ("quantization_config", [], "an object"),
    ("quantization_config.linear_class", None, "a string"),
    ("rope_scaling", "linear", "an object"),
    ("rope_scaling.factor", "1", "a positive float32 number"),
    ("rope_parameters.rope_theta", None, "a positive float32 number"),
]


@pytest.mark.parametrize("key,value,what", WRONG_TYPES,
                         ids=[f"{k}={json.dumps(v)}" for k, v, _ in WRONG_TYPES])
def test_config_field_of_the_wrong_type(fixture_copy, tmp_path, key, value, what):
    ck = fixture_copy(FIXTURE)
    edit_config(ck, key, value)
    out = tmp_path / "o.gguf"
    for args in (["pack", ck, "-o", out], ["inspect", ck], ["logits", ck, "--tokens", "1",
                                                             "-o", tmp_path / "o.npy"]):
        r = cli(*args)
        assert (r.exit_code, r.stderr) == (
            1, f"Error: {ck}/config.json: {key} must be {what}, got {json.dumps(value)}\n"), \
            (args, r.output)
    assert not out.exists() and not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("key", ["num_key_value_heads", "head_dim", "rope_scaling",
                                 "quantization_config"])
def test_null_means_absent_where_transformers_says_so(fixture_copy, tmp_path, key):
    """transformers writes null for these optional fields; the 1bitLLM fixture has each absent
    or at its default (4 kv heads of 4), so null must give the same file byte for byte."""
    ck = fixture_copy("bitnet_b1_58-large")
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg.get(key) in (None, cfg["num_attention_heads"] if key == "num_key_value_heads"
                            else None)
    ref = pack(ck, format="i2s", out=tmp_path / "ref.gguf").path
    edit_config(ck, key, None)
    got = pack(ck, format="i2s", out=tmp_path / "got.gguf").path
    assert got.read_bytes() == ref.read_bytes()


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


TOKENIZER_FILES = [  # (fixture, file, edit, expected line after the file's path)
    ("bitnet-b1.58-2B-4T", "tokenizer_config.json", lambda d: {**d, "add_bos_token": "yes"},
     'add_bos_token must be true or false, got "yes"'),
    ("bitnet_b1_58-large", "tokenizer_config.json", lambda d: {**d, "add_eos_token": 0},
     "add_eos_token must be true or false, got 0"),
    ("bitnet-b1.58-2B-4T", "tokenizer_config.json", lambda d: [d], "expected a JSON object"),
    ("bitnet-b1.58-2B-4T", "tokenizer.json",
     lambda d: {**d, "model": {**d["model"], "vocab": None}},
     "model.vocab must map tokens to integer ids"),
    ("bitnet-b1.58-2B-4T", "tokenizer.json",
     lambda d: {**d, "model": {**d["model"], "merges": [1, 2]}},
     'model.merges must be a list of "a b" strings or [a, b] pairs'),
]


@pytest.mark.parametrize("fixture,name,edit,line", TOKENIZER_FILES,
                         ids=[f"{f}-{n}-{i}" for i, (f, n, _, _) in enumerate(TOKENIZER_FILES)])
def test_tokenizer_files_of_the_wrong_type(fixture_copy, tmp_path, fixture, name, edit, line):
    ck = fixture_copy(fixture)
    _edit_json(ck / name, edit)
    out = tmp_path / "o.gguf"
    r = cli("pack", ck, "-o", out)
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: {ck / name}: {line}\n")
    assert not out.exists()


# --- GGUF metadata: the standardized keys of the wrong type (ggml docs/gguf.md) ---

def rewrite_kvs(src: Path, dst: Path, change) -> None:
    """`src` with each KV record passed through `change` (None drops it); tensors unchanged."""
    import numpy as np

    from bitconv.containers.gguf_reader import kv_records, read_gguf, tensor_bytes
    from bitconv.containers.gguf_writer import GGUFWriter, TensorInfo

    gf = read_gguf(src)
    kvs = [kv for kv in map(change, kv_records(gf)) if kv is not None]
    with open(dst, "wb") as f:
        w = GGUFWriter(f, kvs, [TensorInfo(t.name, t.shape, t.ggml_type, t.nbytes)
                                for t in gf.tensors])
        for t in gf.tensors:
            w.write(np.asarray(tensor_bytes(gf, t)))
            w.end_tensor()
        w.close()


def _set(key: str, vtype: str, value: object):
    from gguf import GGUFValueType as V

    from bitconv.types import KV

    def change(kv):
        return KV(kv.key, V[vtype], value) if kv.key.endswith(key) else kv
    return change


GGUF_KVS = [  # (key suffix, new type, new value, expected text after "metadata <key> must be ")
    (".block_count", "STRING", "2", "a positive integer, got STRING '2'"),
    (".attention.head_count", "FLOAT32", 4.0, "a positive integer, got FLOAT32 4.0"),
    (".attention.head_count", "UINT32", 0, "a positive integer, got UINT32 0"),
    (".attention.layer_norm_rms_epsilon", "STRING", "x",
     "a finite float >= 0, got STRING 'x'"),
    (".rope.freq_base", "FLOAT32", -1.0, "a finite float > 0, got FLOAT32 -1.0"),
    ("tokenizer.ggml.bos_token_id", "UINT32", 99999,
     "a token id below 1024, got UINT32 99999"),
    ("general.architecture", "UINT32", 5, "a string, got UINT32 5"),
    ("tokenizer.ggml.add_bos_token", "UINT8", 1, "true or false, got UINT8 1"),
]


@pytest.mark.parametrize("suffix,vtype,value,what", GGUF_KVS,
                         ids=[f"{k}-{t}" for k, t, _, _ in GGUF_KVS])
def test_gguf_metadata_of_the_wrong_type(world, tmp_path, suffix, vtype, value, what):
    bad = tmp_path / "bad.gguf"
    rewrite_kvs(world / "m.gguf", bad, _set(suffix, vtype, value))
    from bitconv.containers.gguf_reader import read_gguf

    key = next(k for k in read_gguf(world / "m.gguf").kvs if k.endswith(suffix))
    for cmd in (["inspect"], ["run", "-p", "hi", "-n", "1"],
                ["logits", "--tokens", "1", "-o", tmp_path / "o.npy"],
                ["repack", "--format", "tq2_0", "-o", tmp_path / "o.gguf"]):
        r = cli(cmd[0], bad, *cmd[1:])
        assert (r.exit_code, r.stdout, r.stderr) == (
            1, "", f"Error: {bad}: metadata {key} must be {what}\n"), cmd
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


# --- safetensors headers that break the specification ---

def st_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(path: Path, header: dict | bytes, data: bytes) -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"])


def _overlap(h, d):
    a, b = by_offset(h)[:2]
    h[b]["data_offsets"] = [o - 4 for o in h[b]["data_offsets"]]
    return h, d, (f"tensors {a!r} and {b!r} overlap (data_offsets "
                  f"{h[a]['data_offsets'][1]} > {h[b]['data_offsets'][0]})")


def _gap(h, d):
    first = by_offset(h)[0]
    del h[first]
    return h, d, (f"data bytes [0, {len(d) - sum(_n(v) for k, v in h.items() if k != '__metadata__')}) "
                  f"before tensor {by_offset(h)[0]!r} belong to no tensor")


def _n(v):
    return v["data_offsets"][1] - v["data_offsets"][0]


def _trailing(h, d):
    return h, d + b"\0" * 8, ("8 bytes after the last tensor belong to no tensor (the data "
                              "must end at the end of the file)")


def _size_mismatch(h, d):
    name = by_offset(h)[-1]
    h[name]["shape"] = [h[name]["shape"][0] + 1, *h[name]["shape"][1:]]
    b, e = h[name]["data_offsets"]
    want = _n(h[name]) // (h[name]["shape"][0] - 1) * h[name]["shape"][0]
    return h, d, (f"tensor {name!r} byte range does not match its shape ({e - b} bytes at "
                  f"data_offsets [{b}, {e}], {h[name]['dtype']} {h[name]['shape']} needs {want})")


def _dtype(h, d):
    name = by_offset(h)[0]
    h[name]["dtype"] = "Q4_K"
    return h, d, f"tensor {name!r} has unknown dtype 'Q4_K'"


def _duplicate(h, d):
    name = by_offset(h)[0]
    blob = json.dumps(h).encode()
    dup = blob[:-1] + b", " + json.dumps({name: h[name]}).encode()[1:]
    return dup, d, f"malformed safetensors header (key {name!r} appears twice)"


def _metadata(h, d):
    h["__metadata__"] = {"format": "pt", "step": 3}
    return h, d, "malformed safetensors header (__metadata__ must map strings to strings)"


def _negative_shape(h, d):
    name = by_offset(h)[0]
    h[name]["shape"] = [-1, 4]
    return h, d, (f"malformed safetensors header entry {name!r} (shape must be a list of "
                  f"non-negative integers)")


def _offsets_reversed(h, d):
    name = by_offset(h)[0]
    b, e = h[name]["data_offsets"]
    h[name]["data_offsets"] = [e, b]
    return h, d, (f"malformed safetensors header entry {name!r} (data_offsets [{e}, {b}] end "
                  f"before they begin)")


def _offsets_null(h, d):
    name = by_offset(h)[0]
    h[name]["data_offsets"] = None
    return h, d, (f"malformed safetensors header entry {name!r} (data_offsets must be "
                  f"[begin, end], non-negative integers)")


def _not_utf8(h, d):
    return b'{"\xff": 1}', d, ("malformed safetensors header ('utf-8' codec can't decode byte "
                               "0xff in position 2: invalid start byte)")


def _huge_length(h, d):
    return None, d, None  # handled in the test: the length field claims 2^63 bytes


SAFETENSORS_CASES = {f.__name__[1:]: f for f in (
    _overlap, _gap, _trailing, _size_mismatch, _dtype, _duplicate, _metadata, _negative_shape,
    _offsets_reversed, _offsets_null, _not_utf8, _huge_length)}


@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_safetensors_header_against_the_specification(fixture_copy, tmp_path, case):
    ck = fixture_copy(FIXTURE)
    st = ck / "model.safetensors"
    header, data = st_parts(st)
    header, data, message = SAFETENSORS_CASES[case](header, data)
    if case == "huge_length":
        raw = bytearray(st.read_bytes())
        struct.pack_into("<Q", raw, 0, 2**63)
        st.write_bytes(raw)
        message = f"truncated safetensors file (header of {2**63} bytes)"
    else:
        st_write(st, header, data)
    before = digest(ck)
    out = tmp_path / "o.gguf"
    for args in (["pack", ck, "-o", out], ["inspect", ck], ["pack", ck, "--format", "hf", "-o",
                                                             tmp_path / "hf"]):
        r = cli(*args)
        assert (r.exit_code, r.stderr) == (1, f"Error: model.safetensors: {message}\n"), \
            (args, r.output)
    assert not out.exists() and not (tmp_path / "hf").exists()
    assert not list(tmp_path.glob("*.incomplete"))
    assert digest(ck) == before


@pytest.mark.parametrize("writer", ["pack", "repack", "logits"])
def test_a_symlink_left_as_the_temporary_name_is_not_written_through(world, tmp_path, writer):
    """`<out>.incomplete` is replaced, never opened: a symlink there (left by anyone) would
    otherwise have its target truncated and overwritten."""
    victim = tmp_path / "precious"
    victim.write_bytes(b"keep")
    out = tmp_path / ("o.npy" if writer == "logits" else "o.gguf")
    out.with_name(out.name + ".incomplete").symlink_to(victim)
    r = cli(*WRITERS[writer](world), "-o", out)
    assert (r.exit_code, r.stderr) == (0, ""), r.output
    assert victim.read_bytes() == b"keep" and out.is_file() and not out.is_symlink()
    assert not out.with_name(out.name + ".incomplete").exists()


@pytest.mark.parametrize("case,rel,line", [
    ("missing", "nope.toml", "{p}: no such file or directory"),
    ("a_directory", "adir", "{p}: is a directory"),
    ("loop", "loop", "{p}: too many levels of symbolic links"),
    ("binary", "m.gguf", "{p}: not UTF-8 text"),
])
def test_recipe_paths(world, case, rel, line):
    p = world / rel
    for args in (["release", p], ["recipe", "check", p], ["recipe", "lock", p]):
        r = cli(*args)
        assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: {line.format(p=p)}\n"), args
