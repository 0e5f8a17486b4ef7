"""Shared fixtures: the tiny synthetic checkpoints and their packed files, each made once per
test session, and the local fake hub. Tests run the CLI through tests.support.cli.cli.

Isolation: HF_HOME points into a temp dir so no test can touch a real Hugging Face cache.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bitconv.stages.pack import pack
from bitconv.stages.recipes import load_recipe
from bitconv.synth.checkpoints import FIXTURES, make_fixture
from tests.support.fakehub import FakeHub

DEMO_RECIPE = Path(__file__).parent.parent / "recipes" / "demo.toml"


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


@pytest.fixture(scope="session")
def packed(fixtures_root, tmp_path_factory):
    """packed(name, fmt) -> fixture `name` packed to GGUF format `fmt`, packed once per session.

    The file is shared by every test that asks for it: a test that changes it works on a copy."""
    root, made = tmp_path_factory.mktemp("packed"), {}

    def get(name: str, fmt: str) -> Path:
        if (name, fmt) not in made:
            made[name, fmt] = pack(fixtures_root / name, format=fmt,
                                   out=root / f"{name}-{fmt}.gguf").path
        return made[name, fmt]
    return get


@pytest.fixture
def hub(fixtures_root, tmp_path, monkeypatch):
    """The fake hub serving every fixture under its real repo id, and the bf16 2B4T fixture under
    the demo recipe's repo id; bitconv and huggingface_hub pointed at it, with no stored token.

    huggingface_hub reads HF_HUB_OFFLINE at import (`_isolate` sets it to 1), so its module
    constant is switched too; bitconv reads HF_ENDPOINT, HF_HOME and the rest at each call."""
    # imported here, not at the top: huggingface_hub reads the environment once, at import, and
    # must do so under `_isolate`, as it does when bitconv first imports it inside a test
    import huggingface_hub.constants as hfc

    repos = {fx.repo: fixtures_root / n for n, fx in FIXTURES.items()}
    repos[load_recipe(DEMO_RECIPE).repo] = fixtures_root / "bitnet-b1.58-2B-4T-bf16"
    with FakeHub(repos) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hfc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored token
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
        yield h


@pytest.fixture
def fixture_copy(fixtures_root, tmp_path):
    """A private, mutable copy of one fixture (for corruption tests)."""
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(fixtures_root / name, dst)
        return dst
    return copy
