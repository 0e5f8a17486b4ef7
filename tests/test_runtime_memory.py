"""The runtime's weight representation chosen by the memory available (runtime/memory.py).

Every representation (float32, packed float64 or int8 codes kept, or streamed from the file)
gives the same logits bit for bit, in every mode and family; the choice reads shapes only and comes before
any tensor is decoded; when even streaming does not fit, `run`, `logits`, `eval` and `verify`
refuse with one line (exit 1) before loading; `--memory` sizes parse or are a usage error.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bitconv.errors import InputError, MemoryLimitError
from bitconv.runtime import generate, memory
from bitconv.runtime.memory import (
    HEADROOM,
    REPRESENTATIONS,
    choose,
    estimate,
    parse_size,
)
from bitconv.runtime.model import Cache, Model, preferred
from bitconv.runtime.research import parse
from bitconv.runtime.text import load_text_codec
from bitconv.runtime.weights import LazyTensors, load_checkpoint_weights, load_gguf
from bitconv.stages import eval as eval_stage
from bitconv.stages import logits as logits_stage
from bitconv.stages import verify as verify_stage
from bitconv.stages.pack import pack
from bitconv.synth.checkpoints import Shape, make_fixture
from tests.support.cli import cli

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "models" / "bitnet-tiny-shakespeare" / "heldout_sample.txt"
TINY = TEXT.parent
# (family fixture, format) per mode: llama.cpp mode runs TQ2_0 (Q8_K activations) and Q2_0
# (Q8_0 activations); the bitnet.cpp and exact modes run I2_S
CASES = [(fx, fmt, mode)
         for fx in ("bitnet_b1_58-large", "bitnet-b1.58-2B-4T", "Llama3-8B-1.58-100B-tokens")
         for fmt, mode in (("i2s", "exact"), ("i2s", "bitnet.cpp"), ("tq2_0", "llama.cpp"),
                           ("q2_0", "llama.cpp"))]


def usable(mode: str, research=None) -> list[str]:
    """The representations other than f32 that `mode` runs on (f64x3: the integer modes)."""
    return [r for r in REPRESENTATIONS[1:] if r != "f64x3" or preferred(mode, research)[0] == r]


def run_all(w, mode: str, codes: str, research=None) -> list[np.ndarray]:
    """Logits of a 6-token prompt, then of 3 more tokens one at a time through the KV cache."""
    m = Model(w, mode, codes, research=research).load()
    cache = Cache()
    out = [m.forward(np.array([1, 5, 9, 200, 3, 77]), cache)]
    out += [m.forward(np.array([t]), cache) for t in (11, 300, 2)]
    return out


@pytest.mark.parametrize("name,fmt,mode", CASES)
def test_every_representation_gives_the_same_logits(packed, name, fmt, mode):
    w = load_gguf(packed(name, fmt))
    want = run_all(w, mode, "f32")
    for codes in usable(mode):
        got = run_all(w, mode, codes)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), codes


@pytest.mark.parametrize("research", ["v2", "a4.8,kv=3"])
def test_research_modes_too(packed, research):
    # v2's Hadamard sites multiply non-integer values by the codes: the same BLAS call on the
    # same layout in every representation is what keeps them equal there
    w = load_gguf(packed("bitnet-b1.58-2B-4T", "i2s"))
    want = run_all(w, "exact", "f32", parse(research))
    for codes in usable("exact", parse(research)):
        got = run_all(w, "exact", codes, parse(research))
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), codes


def test_a_checkpoint_source_too(fixtures_root):
    w = load_checkpoint_weights(fixtures_root / "Llama3-8B-1.58-100B-tokens")
    want = run_all(w, "exact", "f32")
    for codes in usable("exact"):
        assert all(np.array_equal(a, b) for a, b in zip(run_all(w, "exact", codes), want))


@pytest.mark.parametrize("tokens", [6, 200])
def test_needs_shrink_and_bound_what_is_allocated(packed, tokens):
    """Kept codes largest first; and each estimate is at least what tracemalloc sees numpy
    allocate while the model loads and runs (the mapped file's pages are not allocations)."""
    w = load_gguf(packed("Llama3-8B-1.58-100B-tokens", "i2s"))
    needs = [estimate(w, r, tokens) for r in REPRESENTATIONS]
    assert [n.kept for n in needs] == sorted((n.kept for n in needs), reverse=True)
    assert len({n.kept for n in needs}) == len(needs)
    for need in needs:
        tracemalloc.start()
        Model(w, "exact", need.representation).load().forward(np.arange(tokens))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= need.total - HEADROOM, (need, peak)


def test_the_largest_that_fits_is_chosen(packed):
    w = load_gguf(packed("bitnet-b1.58-2B-4T", "i2s"))
    total = {r: estimate(w, r, 8).total for r in REPRESENTATIONS}
    assert choose(w, 8, 1 << 40).representation == "f32"
    assert choose(w, 8, total["f32"]).representation == "f32"
    assert choose(w, 8, total["f32"] - 1).representation == "i8"  # f64x3's temporaries: more
    assert choose(w, 8, total["i8"] - 1).representation == "stream"
    fast = preferred("exact")  # the first that fits, in the order asked
    assert choose(w, 8, 1 << 40, representations=fast).representation == "f64x3"
    assert choose(w, 8, total["f64x3"], representations=fast).representation == "f64x3"
    assert choose(w, 8, total["f64x3"] - 1, representations=fast).representation == "i8"
    with pytest.raises(MemoryLimitError, match=r"^m: running it needs .* of memory \(codes "
                                               r"decoded from the file per matmul, the least "
                                               r"bitconv can hold it in\); 1\.0 KiB available "
                                               r"\(--memory\)$"):
        choose(w, 8, 1024, name="m")


def test_packed_codes_only_where_the_products_are_integer(packed):
    assert preferred("exact") == preferred("bitnet.cpp") == ("f64x3", "i8", "stream")
    assert preferred("exact", parse("kv=3")) == preferred("exact", parse("a4.8")) \
        == preferred("exact", parse("q-sparse")) == ("f64x3", "i8", "stream")
    assert preferred("llama.cpp") == preferred("exact", parse("v2")) == ("f32", "i8", "stream")
    w = load_gguf(packed("bitnet-b1.58-2B-4T", "tq2_0"))
    with pytest.raises(InputError, match="f64x3"):
        Model(w, "llama.cpp", "f64x3")
    with pytest.raises(InputError, match="f64x3"):
        Model(w, "exact", "f64x3", research=parse("o_in=4:hadamard"))


def _spy(monkeypatch) -> list[str]:
    """Record, in order, every choice and every tensor read (GGUF or checkpoint, dense or
    ternary: every loader goes through LazyTensors)."""
    events: list[str] = []
    real_get = LazyTensors.__getitem__

    def get(self, name):
        events.append("tensor")
        return real_get(self, name)

    def spied(*a, **k):
        events.append("choose")
        return choose(*a, **k)
    monkeypatch.setattr(LazyTensors, "__getitem__", get)
    for mod in (generate, eval_stage, logits_stage, verify_stage):
        monkeypatch.setattr(mod, "choose", spied)
    return events


def _entry_points(tmp_path, gguf, src):
    return {
        "run": lambda mem: list(generate.stream_text(gguf, "hello", 2, memory=mem)),
        "logits": lambda mem: logits_stage.save_logits(gguf, tmp_path / "l.npy", prompt="hi",
                                                       memory=mem, force=True),
        "eval": lambda mem: eval_stage.evaluate(gguf, TEXT, ctx=64, chunks=1, memory=mem),
        "verify": lambda mem: verify_stage.verify(gguf, source=src, tokens=4, memory=mem),
    }


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    """A model whose largest tensor (4096 x 1024: 4 MiB of int8 codes, 16 MiB as float32) is
    far above what reading the metadata and building the tokenizer allocate (0.85 MiB)."""
    root = tmp_path_factory.mktemp("mid")
    src = make_fixture("bitnet-b1.58-2B-4T", root / "src",
                       Shape(hidden=1024, inter=4096, layers=1, heads=8, kv_heads=4))
    return pack(src, out=root / "mid.gguf").path, src


@pytest.mark.parametrize("command", ["run", "logits", "eval", "verify"])
def test_the_choice_comes_before_any_tensor_is_read(mid, tmp_path, monkeypatch, command):
    gguf, src = mid
    call = _entry_points(tmp_path, gguf, src)[command]
    events = _spy(monkeypatch)
    call(None)  # fits: the choice first, then the tensors
    assert events[0] == "choose" and "tensor" in events, events[:5]
    # refused: no tensor read, and nothing near one tensor's codes allocated
    events.clear()
    tracemalloc.start()
    with pytest.raises(MemoryLimitError):
        call(1 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert events == ["choose"]
    assert peak < 2 << 20, peak  # half of the largest tensor's int8 codes


@pytest.mark.parametrize("args", [
    ["run", "{m}", "-p", "hello", "-n", "2"],
    ["logits", "{m}", "--tokens", "1,2,3", "-o", "{o}"],
    ["eval", "{m}", "--text", str(TEXT), "--ctx", "64"],
    ["verify", "{m}", "--source", "{s}"],
], ids=lambda a: a[0])
def test_too_little_memory_is_one_line_exit_1(mid, tmp_path, args):
    gguf, src = mid
    model = TINY if args[0] == "eval" else gguf
    argv = [a.format(m=model, o=tmp_path / "o.npy", s=src) for a in args]
    r = subprocess.run([sys.executable, "-m", "bitconv", *argv, "--memory", "4M"],
                       check=False, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {model}: running it needs "), lines
    assert lines[0].endswith("; 4.0 MiB available (--memory)")
    assert not (tmp_path / "o.npy").exists()


def test_enough_memory_runs_the_same_text():
    # the tiny model held as int8 codes (a budget below f32's) writes what f32 writes
    w = load_checkpoint_weights(TINY)
    n = len(load_text_codec(TINY, w.kvs).encode("ROMEO:"))
    budget = estimate(w, "i8", n + 8, batch=n).total  # as `run` asks: the prompt, then 8 more
    assert choose(w, n + 8, budget, batch=n).representation == "i8"
    args = ["run", str(TINY), "-p", "ROMEO:", "-n", "8"]
    want = cli(*args)
    got = cli(*args, "--memory", budget)
    assert want.exit_code == got.exit_code == 0 and got.output == want.output


@pytest.mark.parametrize("text,size", [
    ("14G", 14 << 30), ("512M", 512 << 20), ("1.5g", 3 << 29), ("64KiB", 64 << 10),
    ("1000", 1000), ("2TB", 2 << 40), (" 7 m ", 7 << 20), (".5K", 512),
])
def test_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "abc", "-1G", "0", "0.0001", "1x", "1GG", "1e9"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InputError, match="memory size"):
        parse_size(text)


def test_a_bad_size_is_a_usage_error():
    r = cli("run", TINY, "-p", "x", "--memory", "lots")
    assert r.exit_code == 2 and "Invalid value for '--memory': memory size 'lots'" in r.stderr


def test_available_memory_honours_rlimit_as():
    """Under an address-space limit, what is left of it is the budget (in a child process:
    the limit cannot be raised back)."""
    code = ("import resource\n"
            "from bitconv.runtime.memory import _status, available\n"
            "resource.setrlimit(resource.RLIMIT_AS, (_status('VmSize') + (300 << 20),"
            " resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
            "b = available()\n"
            "print(b.source, b.bytes >> 20)\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    source, mib = r.stdout.split()
    assert r.returncode == 0 and source == "RLIMIT_AS" and 290 <= int(mib) <= 300, r.stdout


def test_available_memory_is_measured():
    b = memory.available()
    assert 0 < b.bytes and b.source in ("MemAvailable", "RLIMIT_AS", "cgroup memory.max")
    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        assert b.bytes <= memory._meminfo("MemAvailable") or b.source != "MemAvailable"


def test_a_measured_budget_is_planned_at_85_percent(packed, monkeypatch):
    # what is measured is a moment's reading: choose plans with 85% of it; --memory as given
    w = load_gguf(packed("bitnet-b1.58-2B-4T", "i2s"))
    need = estimate(w, "f64x3", 8).total
    for measured, fits in ((need * 100 // 85 + 1, True), (need * 100 // 85 - 1, False)):
        monkeypatch.setattr(memory, "available", lambda m=measured: memory.Budget(m, "MemAvailable"))
        got = choose(w, 8, representations=preferred("exact"))
        assert (got.representation == "f64x3") == fits
        assert got.budget.source == "85% of MemAvailable"
    assert choose(w, 8, need + 1, representations=preferred("exact")).representation == "f64x3"
