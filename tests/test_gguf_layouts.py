"""GGUF layouts other writers may choose: the reader takes any the specification allows.

ggml docs/gguf.md asks of a tensor's offset only that it be a multiple of general.alignment,
relative to the start of the data section. bitconv writes the data in info order without gaps (as
mainline llama.cpp's gguf.cpp requires since 2025), but gguf-py's reader and bitnet.cpp's ggml
take the offsets as given, so a file whose data is in another order, or has gaps, is a valid
GGUF. `relayout` rewrites one of ours that way and every command must read it as the original:
same tensors, same logits, byte-identical repack. Misaligned offsets, data past the end and
overlapping tensors are refused in one line naming the tensor, exit 1.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from bitconv.containers.gguf_reader import read_gguf, tensor_bytes
from bitconv.containers.gguf_writer import _encode_str
from tests.support.cli import cli

FIXTURE = "Llama3-8B-1.58-100B-tokens"


def relayout(src: Path, dst: Path, order: list[int] | None = None, gap: int = 0) -> list[int]:
    """Rewrite GGUF `src` as `dst` with tensor data stored in `order` (indices into the tensor
    infos; default reversed) and `gap` extra bytes (0xAB) after each tensor's padding. Header and
    infos stay as they are except each info's offset. Returns the new relative offsets."""
    gf = read_gguf(src)
    raw = src.read_bytes()
    head = bytearray(raw[:gf.data_offset])
    order = list(range(len(gf.tensors)))[::-1] if order is None else order
    data = bytearray()
    offsets = [0] * len(gf.tensors)
    for i in order:
        t = gf.tensors[i]
        dims = tuple(reversed(t.shape))
        info = _encode_str(t.name.encode()) + struct.pack(f"<I{len(dims)}QI", len(dims), *dims,
                                                          t.ggml_type)
        at = head.index(info) + len(info)  # the u64 offset follows the type
        offsets[i] = len(data)
        struct.pack_into("<Q", head, at, len(data))
        data += raw[t.offset:t.offset + t.nbytes]
        data += b"\xab" * (-len(data) % gf.alignment + gap)
    dst.write_bytes(bytes(head) + bytes(data))
    return offsets


@pytest.fixture(scope="module")
def files(packed, tmp_path_factory):
    plain = packed(FIXTURE, "tq2_0")
    moved = tmp_path_factory.mktemp("layouts") / "moved.gguf"
    offsets = relayout(plain, moved, gap=64)  # reversed, 64 spare bytes after every tensor
    return plain, moved, offsets


def test_relayout_really_moves_the_data(files):
    plain, moved, offsets = files
    gf = read_gguf(moved)
    rel = [t.offset - gf.data_offset for t in gf.tensors]
    assert rel == offsets and rel != sorted(rel) and rel[-1] == 0  # reversed, last info first
    assert moved.stat().st_size > plain.stat().st_size  # the gaps
    for a, b in zip(read_gguf(plain).tensors, gf.tensors):
        assert np.array_equal(tensor_bytes(read_gguf(plain), a), tensor_bytes(gf, b))


def test_gguf_py_reads_the_moved_file_the_same(files):
    """An independent reader of the spec (gguf-py, llama.cpp's Python package) agrees."""
    from gguf import GGUFReader

    _, moved, _ = files
    ours = read_gguf(moved)
    theirs = {t.name: t for t in GGUFReader(moved).tensors}
    for t in ours.tensors:
        assert int(theirs[t.name].data_offset) == t.offset
        assert np.array_equal(np.asarray(theirs[t.name].data).reshape(-1).view(np.uint8),
                              np.asarray(tensor_bytes(ours, t)))


def test_every_command_reads_the_moved_file_as_the_original(files, fixtures_root, tmp_path):
    plain, moved, _ = files
    a, b = cli("inspect", plain), cli("inspect", moved)
    assert a.exit_code == b.exit_code == 0
    assert a.stdout.replace(str(plain), "X") == b.stdout.replace(str(moved), "X")

    r = cli("verify", moved, "--source", fixtures_root / FIXTURE, "--no-drift")
    assert r.exit_code == 0, r.output

    for f, o in ((plain, "a.npy"), (moved, "b.npy")):
        r = cli("logits", f, "--tokens", "1,5,9,200", "-o", tmp_path / o)
        assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))

    for f, o in ((plain, "a-i2s.gguf"), (moved, "b-i2s.gguf")):
        r = cli("repack", f, "--format", "i2s", "-o", tmp_path / o)
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a-i2s.gguf").read_bytes() == (tmp_path / "b-i2s.gguf").read_bytes()

    a, b = cli("run", plain, "-p", "hello", "-n", "4"), cli("run", moved, "-p", "hello", "-n", "4")
    assert a.exit_code == b.exit_code == 0 and a.stdout == b.stdout


def _set_offset(path: Path, name: str, rel: int) -> None:
    gf = read_gguf(path)
    t = next(t for t in gf.tensors if t.name == name)
    dims = tuple(reversed(t.shape))
    data = bytearray(path.read_bytes())
    info = _encode_str(name.encode()) + struct.pack(f"<I{len(dims)}QI", len(dims), *dims,
                                                    t.ggml_type)
    struct.pack_into("<Q", data, data.index(info) + len(info), rel)
    path.write_bytes(data)


@pytest.mark.parametrize("case", ["misaligned", "overlap", "past_end"])
def test_impossible_offsets_are_one_line_naming_the_tensor(files, tmp_path, case):
    _, moved, offsets = files
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(moved.read_bytes())
    gf = read_gguf(moved)
    victim = gf.tensors[1]  # its data sits near the end of the moved file
    neighbour = gf.tensors[0]  # stored right after it (reversed order)
    size = bad.stat().st_size
    if case == "misaligned":
        rel = offsets[1] + 8
        want = (f"tensor {victim.name!r} has offset {rel}, not a multiple of "
                f"general.alignment 32")
    elif case == "overlap":
        rel = offsets[0]  # on top of the neighbour
        want = None
    else:
        rel = size - gf.data_offset  # aligned? the file ends on an alignment boundary
        rel += -rel % 32
        want = (f"truncated: tensor {victim.name!r} ends at byte "
                f"{gf.data_offset + rel + victim.nbytes}, file has {size}")
    _set_offset(bad, victim.name, rel)
    for cmd in (["inspect"], ["verify"], ["logits", "--tokens", "1", "-o", tmp_path / "x.npy"],
                ["run", "-p", "a", "-n", "1"], ["repack", "--format", "i2s", "-o", tmp_path / "x.gguf"]):
        r = cli(cmd[0], bad, *cmd[1:])
        assert r.stderr.count("\n") == 1, (cmd, r.output)
        if cmd[0] == "verify":  # a broken container is what verify reports: FAIL, exit 3
            assert r.exit_code == 3 and "FAIL" in r.stdout, r.output
        else:
            assert r.exit_code == 1 and r.stdout == "", (cmd, r.output)
        if want is not None:
            assert r.stderr.endswith(f"{bad}: {want}\n"), (cmd, r.stderr)
        else:
            assert "overlap" in r.stderr and victim.name in r.stderr and neighbour.name in r.stderr
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "x.gguf").exists()
