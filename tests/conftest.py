"""Shared fixtures: the tiny synthetic checkpoints, generated once per test session.

Isolation: HF_HOME points into a temp dir so no test can touch a real Hugging Face cache.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from bitconv.synth.checkpoints import FIXTURES, make_fixture


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def fixtures_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name in FIXTURES:
        make_fixture(name, root / name)
    return root


@pytest.fixture
def fixture_copy(fixtures_root, tmp_path):
    """A private, mutable copy of one fixture (for corruption tests)."""
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(fixtures_root / name, dst)
        return dst
    return copy


def tensor_range(path: Path, name: str) -> tuple[int, int, str]:
    """Absolute byte range and dtype of one tensor, parsed from the safetensors header by hand."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    info = json.loads(raw[8:8 + n])[name]
    b, e = info["data_offsets"]
    return 8 + n + b, 8 + n + e, info["dtype"]


def patch_bytes(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
