"""Property-based fuzzing of the two header parsers and the GGUF tensor reader, on real files.

Every mutated file must end in success or a BitconvError with exit code 1 or 3 (one line in the
CLI), never another exception, and allocate no more than a small multiple of the file's own size
(tracemalloc peak, numpy buffers included): a length field that claims gigabytes must be refused
before anything is allocated for it. The multiple (AMPLIFICATION) is not 1 because a header's
items become Python objects: a string of 2 bytes (10 in the file with its length) is a 51-byte
str plus a list slot, and a string is decoded from a copy of its bytes; hypothesis finds ~3x on
its own (a shifted length field turning 0.8 MB of tensor data into one "string"). What matters
is that the peak follows the bytes that are there, never a claimed length: with the 2^63-byte
claims among the mutations, a claim-driven allocation would fail this by gigabytes.

Inputs: the safetensors file of the bitnet-b1.58-2B-4T fixture and the GGUF files `pack` writes
from it (I2_S) and from the Llama fixture (TQ2_0, with its F32 `.scale` companions).
Mutations: byte overwrites, 32/64-bit little-endian "interesting" values (0, 2^31, 2^63, 2^64-1,
the file size...) written anywhere, cuts, deletions and insertions, mostly inside the header;
for safetensors also JSON-level edits (a field of one tensor entry replaced by another JSON value),
which reach the validation behind the JSON syntax.

Determinism: the FUZZ settings are derandomized (examples follow from the test's source alone, no
example database), so every machine runs the same mutations; together ~2,900 examples and 9
command lines, about half a minute of CPU.
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bitconv.containers.gguf_reader import read_gguf
from bitconv.containers.safetensors import MappedFiles, read_header
from bitconv.errors import BitconvError
from bitconv.runtime.weights import load_gguf

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                phases=(Phase.explicit, Phase.generate, Phase.shrink),
                suppress_health_check=list(HealthCheck))

AMPLIFICATION = 8
SLACK = 256 * 1024  # interpreter noise (caches, first-call setup): the same for any file size
U64 = [0, 1, 7, 8, 31, 32, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1,
       2**63, 2**64 - 1]
U32 = [0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 255,
       2**16, 2**31, 2**32 - 1]


@pytest.fixture(scope="module")
def files(fixtures_root, packed):
    i2s = packed("bitnet-b1.58-2B-4T", "i2s")
    tq2 = packed("Llama3-8B-1.58-100B-tokens", "tq2_0")
    st_file = fixtures_root / "bitnet-b1.58-2B-4T" / "model.safetensors"
    return {"i2s": i2s.read_bytes(), "tq2": tq2.read_bytes(), "st": st_file.read_bytes()}


def edits(size: int, hot: int, fields: list[int] = ()):
    """Lists of 1-4 edits; positions mostly in the first `hot` bytes (the header), and at the
    given `fields` (a GGUF's tensor-info dims, types and offsets) where there are some."""
    pos = st.one_of(st.integers(0, hot - 1), st.integers(0, hot - 1), st.integers(0, hot - 1),
                    st.integers(0, size - 1), *([st.sampled_from(fields)] * 2 if fields else []))
    size_values = [size, size - 1, size + 1, size - 8, size // 2]
    edit = st.one_of(
        st.tuples(st.just("byte"), pos, st.integers(0, 255)),
        st.tuples(st.just("u64"), pos, st.sampled_from(U64 + size_values)),
        st.tuples(st.just("u32"), pos, st.sampled_from(U32)),
        st.tuples(st.just("cut"), pos, st.just(0)),
        st.tuples(st.just("delete"), pos, st.integers(1, 16)),
        st.tuples(st.just("insert"), pos, st.integers(0, 255)),
    )
    return st.lists(edit, min_size=1, max_size=4)


def apply(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for kind, at, v in ops:
        at = min(at, len(b))
        if kind == "byte" and at < len(b):
            b[at] = v
        elif kind == "u64":
            b[at:at + 8] = struct.pack("<Q", v)
        elif kind == "u32":
            b[at:at + 4] = struct.pack("<I", v)
        elif kind == "cut":
            del b[at:]
        elif kind == "delete":
            del b[at:at + v]
        elif kind == "insert":
            b[at:at] = bytes([v]) * (1 + v % 8)
    return bytes(b)


def judged(path: Path, work) -> str:
    """Run `work(path)`; success or a one-line BitconvError (exit 1 or 3) is fine, with the
    traced peak within AMPLIFICATION x the file's size (+ SLACK). Returns "ok" or the error text."""
    limit = AMPLIFICATION * path.stat().st_size + SLACK
    tracemalloc.start()
    try:
        work(path)
        outcome = "ok"
    except BitconvError as e:
        assert e.exit_code in (1, 3), e
        assert "\n" not in str(e), e
        outcome = str(e)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= limit, f"peak {peak} bytes > file size {limit}: {outcome}"
    return outcome


def kind(outcome: str) -> str:
    """An outcome without its names and numbers: which check spoke."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "X", outcome.split(": ", 1)[-1]))[:60]


def read_all_gguf(path: Path) -> None:
    """Header, then every tensor through the runtime's reader (codec decode included)."""
    read_gguf(path)
    w = load_gguf(path)
    for name in w.order:
        w.tensors[name]


def read_all_safetensors(path: Path) -> None:
    refs = read_header(path)
    with MappedFiles() as m:
        for ref in refs.values():
            m.view(ref).sum()  # every byte range maps and reshapes


def info_fields(path: Path) -> tuple[int, list[int]]:
    """The header's size and the byte positions of every tensor info's dims, type and offset."""
    gf = read_gguf(path)
    raw = path.read_bytes()
    fields = []
    for t in gf.tensors:
        name = t.name.encode()
        at = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4  # the dims
        fields += [at + 8 * i for i in range(len(t.shape))]
        fields += [at + 8 * len(t.shape), at + 8 * len(t.shape) + 4]  # type, offset
    return gf.data_offset, fields


@pytest.mark.parametrize("which,n", [("i2s", 700), ("tq2", 400)])
def test_gguf_mutations(files, tmp_path, which, n):
    data = files[which]
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    hot, fields = info_fields(path)
    seen: dict[str, int] = {}

    @settings(FUZZ, max_examples=n)
    @given(edits(len(data), hot, fields))
    def check(ops):
        path.write_bytes(apply(data, ops))
        seen[kind(judged(path, read_all_gguf))] = 1

    check()
    assert "ok" in seen and len(seen) > 8, sorted(seen)  # both, and many kinds of refusal


@pytest.mark.parametrize("n", [800])
def test_safetensors_byte_mutations(files, tmp_path, n):
    data = files["st"]
    (hlen,) = struct.unpack("<Q", data[:8])
    path = tmp_path / "model.safetensors"
    seen: dict[str, int] = {}

    @settings(FUZZ, max_examples=n)
    @given(edits(len(data), 8 + hlen))
    def check(ops):
        path.write_bytes(apply(data, ops))
        seen[kind(judged(path, read_all_safetensors))] = 1

    check()
    assert "ok" in seen and len(seen) > 5, sorted(seen)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.sampled_from(U64 + [-1, -(2**63)]) | st.integers()
    | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=2),
    max_leaves=6)


@pytest.mark.parametrize("n", [1000])
def test_safetensors_json_mutations(files, tmp_path, n):
    data = files["st"]
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    body = data[8 + hlen:]
    names = sorted(header)
    path = tmp_path / "model.safetensors"
    seen: dict[str, int] = {}

    @settings(FUZZ, max_examples=n)
    @given(st.lists(st.tuples(st.sampled_from(names),
                              st.sampled_from(["dtype", "shape", "data_offsets", "extra", None]),
                              JSON_VALUES), min_size=1, max_size=3),
           st.sampled_from([0, 0, 0, 1, -1, 8]))
    def check(changes, trailing):
        h = json.loads(json.dumps(header))
        for name, key, value in changes:
            if key is None or not isinstance(h.get(name), dict):
                h[name] = value
            else:
                h[name][key] = value
        blob = json.dumps(h).encode()
        body2 = body + b"\0" * trailing if trailing >= 0 else body[:trailing]
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + body2)
        seen[kind(judged(path, read_all_safetensors))] = 1

    check()
    assert "ok" in seen and len(seen) > 8, sorted(seen)  # the validation's many refusals


def test_the_cli_on_mutated_files(files, fixtures_root, tmp_path):
    """A few mutated files through the real command line, in a child process: one line on
    stderr, exit 0, 1 or 3, never a traceback."""
    import shutil

    cases = []
    # n_tensors claims 2^63; a string length of 2^40 (general.architecture's key); a cut
    for i, ops in enumerate([[("u64", 8, 2**63)], [("u64", 24, 2**40)], [("cut", 5000, 0)]]):
        p = tmp_path / f"m{i}.gguf"
        p.write_bytes(apply(files["i2s"], ops))
        cases.append(["inspect", p])
        cases.append(["verify", p])
    (hlen,) = struct.unpack("<Q", files["st"][:8])
    for i, ops in enumerate([[("u64", 0, 2**63)], [("byte", 8 + hlen // 2, ord("}"))],
                             [("cut", 8 + hlen + 100, 0)]]):
        ck = tmp_path / f"ck{i}"
        shutil.copytree(fixtures_root / "bitnet-b1.58-2B-4T", ck)
        (ck / "model.safetensors").write_bytes(apply(files["st"], ops))
        cases.append(["pack", ck, "-o", tmp_path / f"o{i}.gguf"])
    env = {**os.environ, "BITCONV_DEBUG": ""}
    for args in cases:
        r = subprocess.run([sys.executable, "-m", "bitconv", *map(str, args)],
                           capture_output=True, text=True, timeout=120, env=env,
                           check=False)
        assert r.returncode in (0, 1, 3), (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        if r.returncode:
            assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, (args, r.stderr)
